/*
 * fastgrad accumulator: the contract.
 *
 * Everything here is one pass over arrays the caller owns. No allocation, no globals,
 * thread-safe, and no Python: the binding (fastgrad/accumulate.py) hands in numpy buffers.
 *
 * Verdict codes (FG_VERDICT_*) are fixed here; the binding (fastgrad/judge/verdicts.py) reads them
 * from this header through cffi. The numbers of the method (bands, tolerance, roundoff factor, kink
 * threshold) are the caller's, passed in an fg_method (fastgrad/steps.py holds them).
 *   rel_error = |a - n| / max(|a|, |n|), 0 when both are 0.
 *   bands: rel > band_wrong WRONG, band_suspect < rel <= band_wrong SUSPECT,
 *          band_ok < rel <= band_suspect OK, else EXCELLENT (CS231n: 1e-2, 1e-4, 1e-7).
 *   NOISE: rel > tol but |a - n| <= noise floor, where
 *          noise floor = (noise_eps * (|f+| + |f-|) + noise_abs) / (2 h): roundoff of f, relative
 *          to the loss values plus an absolute part (measured noise), divided by the step.
 *   NAN:   f+ or f- is not finite (the coordinate fails).
 *   KINK:  set only by the caller, after a re-check could not resolve a kink crossing.
 *   INCONCLUSIVE: set only by the caller, when the measured noise of f leaves the numeric
 *          derivative uncertain by more than tol at every step tried (neither a pass nor a
 *          failure; fg_segments treats it like NOISE).
 *
 * Kink score: the one-sided slopes s+ = (f+ - f0)/h and s- = (f0 - f-)/h disagree by
 *   |s+ - s-| / (|s+| + |s-| + noise floor).
 * At a kink crossing the centered difference is their mean, so the error |a - n| is about
 * |s+ - s-| / 2 and the score is comparable to rel_error; for a smooth f the score is
 * h |f''| / 2|f'|, far below rel_error. A coordinate is a kink candidate when it is failing
 * (rel > tol, not noise) and its score is at least kink_explains * rel_error.
 */
#ifndef FASTGRAD_ACCUMULATE_H
#define FASTGRAD_ACCUMULATE_H

#include <stdint.h>

#define FG_VERDICT_EXCELLENT 0
#define FG_VERDICT_OK 1
#define FG_VERDICT_SUSPECT 2
#define FG_VERDICT_WRONG 3
#define FG_VERDICT_NOISE 4
#define FG_VERDICT_NAN 5
#define FG_VERDICT_KINK 6
#define FG_VERDICT_INCONCLUSIVE 7

/* The numbers of the method for one call of fg_coords. */
typedef struct {
    double tol;           /* failure threshold on rel_error */
    double noise_eps;     /* unit roundoff of f times a safety factor */
    double band_wrong;    /* verdict band edges on rel_error */
    double band_suspect;
    double band_ok;
    double kink_explains; /* a failing coordinate is a kink candidate at score >= this * rel */
} fg_method;

/* log10 histogram of relative errors: bin 0 holds rel < 1e-16 (zero included),
   bin b (1..16) holds 10^(b-17) <= rel < 10^(b-16), bin 17 holds rel >= 1. NaN is not binned. */
#define FG_HIST_BINS 18

/*
 * Per coordinate i < n, from the analytic gradient a, the losses f_plus/f_minus at x +- h e_i,
 * the unperturbed loss f0 and the step h (> 0):
 *   numeric, rel_error, noise (absolute floor), kink_score, verdict, failed (0/1), kink (0/1 candidate).
 * method holds tol, noise_eps and the bands (above); noise_abs (>= 0) is an absolute noise level
 * of f(x+h) - f(x-h), e.g. measured.
 * Returns the number of failed coordinates.
 */
int64_t fg_coords(int64_t n, const double *analytic, const double *f_plus, const double *f_minus,
                  double f0, const double *step, const fg_method *method, double noise_abs,
                  double *numeric, double *rel_error, double *noise, double *kink_score,
                  int8_t *verdict, uint8_t *failed, uint8_t *kink);

/*
 * Per segment s < n_segments, over the coordinates i < n with segment[i] == s:
 *   checked[s], failed[s] (sum of failed[i]), kinks[s] (sum of kink[i]),
 *   max_rel[s] and argmax[s] (position i of the first maximum; -1 and 0.0 when none) over the
 *   coordinates whose verdict is not NOISE, NAN, KINK or INCONCLUSIVE, and hist[s * FG_HIST_BINS + b].
 * The outputs are overwritten, not accumulated into. Returns -1 if a segment id is out of range
 * (outputs then undefined), else 0.
 */
int fg_segments(int64_t n, const int64_t *segment, const double *rel_error, const int8_t *verdict,
                const uint8_t *failed, const uint8_t *kink, int64_t n_segments,
                int64_t *checked, int64_t *failed_count, int64_t *kinks, double *max_rel,
                int64_t *argmax, int64_t *hist);

#endif
