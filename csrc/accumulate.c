#include <math.h>
#include <string.h>

#include "accumulate.h"

static int8_t band(double rel, const fg_method *m)
{
    if (rel > m->band_wrong) return FG_VERDICT_WRONG;
    if (rel > m->band_suspect) return FG_VERDICT_SUSPECT;
    if (rel > m->band_ok) return FG_VERDICT_OK;
    return FG_VERDICT_EXCELLENT;
}

int64_t fg_coords(int64_t n, const double *analytic, const double *f_plus, const double *f_minus,
                  double f0, const double *step, const fg_method *method, double noise_abs,
                  double *numeric, double *rel_error, double *noise, double *kink_score,
                  int8_t *verdict, uint8_t *failed, uint8_t *kink)
{
    const double tol = method->tol, noise_eps = method->noise_eps;
    int64_t n_failed = 0;
    for (int64_t i = 0; i < n; i++) {
        const double a = analytic[i], fp = f_plus[i], fm = f_minus[i], h = step[i];
        kink[i] = 0;
        if (!isfinite(fp) || !isfinite(fm)) {
            numeric[i] = NAN;
            rel_error[i] = NAN;
            noise[i] = NAN;
            kink_score[i] = NAN;
            verdict[i] = FG_VERDICT_NAN;
            failed[i] = 1;
            n_failed++;
            continue;
        }
        const double num = (fp - fm) / (2.0 * h);
        const double diff = fabs(a - num);
        const double scale = fmax(fabs(a), fabs(num));
        const double rel = scale > 0.0 ? diff / scale : 0.0;
        const double floor_abs = (noise_eps * (fabs(fp) + fabs(fm)) + noise_abs) / (2.0 * h);
        const double s_plus = (fp - f0) / h, s_minus = (f0 - fm) / h;
        const double gap = fabs(s_plus - s_minus);
        const double score = gap > 0.0 ? gap / (fabs(s_plus) + fabs(s_minus) + floor_abs) : 0.0;

        numeric[i] = num;
        rel_error[i] = rel;
        noise[i] = floor_abs;
        kink_score[i] = score;
        if (rel > tol && diff <= floor_abs) {
            verdict[i] = FG_VERDICT_NOISE;
            failed[i] = 0;
        } else {
            verdict[i] = band(rel, method);
            failed[i] = rel > tol;
            kink[i] = failed[i] && score >= method->kink_explains * rel;
        }
        n_failed += failed[i];
    }
    return n_failed;
}

static int hist_bin(double rel)
{
    if (!(rel >= 1e-16)) return 0;
    if (rel >= 1.0) return FG_HIST_BINS - 1;
    int b = (int)floor(log10(rel)) + 17;
    /* log10 of values just below a power of ten can round up to it */
    if (b < 1) b = 1;
    if (b > FG_HIST_BINS - 2) b = FG_HIST_BINS - 2;
    return b;
}

int fg_segments(int64_t n, const int64_t *segment, const double *rel_error, const int8_t *verdict,
                const uint8_t *failed, const uint8_t *kink, int64_t n_segments,
                int64_t *checked, int64_t *failed_count, int64_t *kinks, double *max_rel,
                int64_t *argmax, int64_t *hist)
{
    memset(checked, 0, (size_t)n_segments * sizeof *checked);
    memset(failed_count, 0, (size_t)n_segments * sizeof *failed_count);
    memset(kinks, 0, (size_t)n_segments * sizeof *kinks);
    memset(hist, 0, (size_t)n_segments * FG_HIST_BINS * sizeof *hist);
    for (int64_t s = 0; s < n_segments; s++) {
        max_rel[s] = 0.0;
        argmax[s] = -1;
    }
    for (int64_t i = 0; i < n; i++) {
        const int64_t s = segment[i];
        if (s < 0 || s >= n_segments) return -1;
        const double rel = rel_error[i];
        const int8_t v = verdict[i];
        checked[s]++;
        failed_count[s] += failed[i] != 0;
        kinks[s] += kink[i] != 0;
        if (!isnan(rel)) hist[s * FG_HIST_BINS + hist_bin(rel)]++;
        if (v == FG_VERDICT_NOISE || v == FG_VERDICT_NAN || v == FG_VERDICT_KINK
            || v == FG_VERDICT_INCONCLUSIVE) continue;
        if (argmax[s] < 0 || rel > max_rel[s]) {
            max_rel[s] = rel;
            argmax[s] = i;
        }
    }
    return 0;
}
