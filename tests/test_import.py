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
