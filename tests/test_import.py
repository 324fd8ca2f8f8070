import subprocess
import sys


def test_import_fastgrad_is_light():
    code = ("import sys, fastgrad; "
            "print(sorted(m for m in ('torch', 'jax', 'matplotlib', 'dask', 'distributed', "
            "'sklearn', 'numba') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_public_names_of_the_contract():
    import fastgrad as fg

    for name in ("SegmentMap", "Segment", "flatten", "unflatten", "check", "assert_gradients",
                 "GradientCheckError", "Problem", "audit", "check_model", "check_layer"):
        assert hasattr(fg, name), name
    assert issubclass(fg.GradientCheckError, AssertionError)


def test_import_fastgrad_installs_nothing():
    # no import hook, no numba patch: the kernels' cache folder is chosen at their first compile
    code = ("import sys; finders = list(sys.meta_path); import fastgrad; "
            "print(sys.meta_path == finders, 'fastgrad._numba_cache' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["True", "False"]
