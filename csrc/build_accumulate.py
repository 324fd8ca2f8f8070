"""cffi builder for fastgrad._accumulate (out-of-line API mode, compiled at install time)."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct {
        double tol; double noise_eps; double band_wrong; double band_suspect; double band_ok;
        double kink_explains;
    } fg_method;
    int64_t fg_coords(int64_t n, const double *analytic, const double *f_plus,
                      const double *f_minus, double f0, const double *step,
                      const fg_method *method, double noise_abs, double *numeric,
                      double *rel_error, double *noise, double *kink_score, int8_t *verdict,
                      uint8_t *failed, uint8_t *kink);
    int fg_segments(int64_t n, const int64_t *segment, const double *rel_error,
                    const int8_t *verdict, const uint8_t *failed, const uint8_t *kink,
                    int64_t n_segments, int64_t *checked, int64_t *failed_count, int64_t *kinks,
                    double *max_rel, int64_t *argmax, int64_t *hist);
    #define FG_HIST_BINS ...
    #define FG_VERDICT_EXCELLENT ...
    #define FG_VERDICT_OK ...
    #define FG_VERDICT_SUSPECT ...
    #define FG_VERDICT_WRONG ...
    #define FG_VERDICT_NOISE ...
    #define FG_VERDICT_NAN ...
    #define FG_VERDICT_KINK ...
    #define FG_VERDICT_INCONCLUSIVE ...
    """
)
ffibuilder.set_source(
    "fastgrad._accumulate",
    '#include "accumulate.h"',
    sources=["csrc/accumulate.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=c99"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
