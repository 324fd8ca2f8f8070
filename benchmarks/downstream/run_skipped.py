"""pytest plugin for benchmarks/downstream/run.py: runs the tests a project marks ``skip``.

pytorch_wavelets skips every one of its gradient checks with ``@pytest.mark.skip("These tests
take a very long time to compute")``: full-Jacobian checks of its custom autograd Functions on
3 x 32 x 32 images, 3-20 s each with torch's checker here. They are exactly the checks fastgrad
is for, so the benchmark runs them (``-p run_skipped``, with this folder on PYTHONPATH). Only
the ``skip`` mark is dropped; ``skipif`` and everything else stay as the project wrote them.
"""


def pytest_collection_modifyitems(items):
    for item in items:
        item.own_markers = [m for m in item.own_markers if m.name != "skip"]
