import numpy as np
import pytest

import fastgrad as fg


def test_from_shapes_names_sizes_and_locate():
    segs = fg.SegmentMap.from_shapes({"W1": (64, 32), "b1": (32,), "W2": (32, 10), "b2": (10,)})
    assert segs.names == ("W1", "b1", "W2", "b2")
    assert segs["b1"] == fg.Segment("b1", 2048, 2080, (32,))
    assert segs.size == 2048 + 32 + 320 + 10
    assert segs.locate(0) == ("W1", (0, 0))
    assert segs.locate(12 * 32 + 3) == ("W1", (12, 3))
    assert segs.locate(2048) == ("b1", (0,))
    assert segs.locate(segs.size - 1) == ("b2", (9,))
    with pytest.raises(IndexError):
        segs.locate(segs.size)


def test_flatten_unflatten_roundtrip_is_a_float64_copy():
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3])
    theta, segs = fg.flatten({"W": W, "b": b})
    assert theta.dtype == np.float64 and theta.shape == (9,)
    theta[0] = 100.0
    assert W[0, 0] == 0.0, "flatten must copy"
    back = fg.unflatten(theta, segs)
    assert back["W"].shape == (2, 3) and back["W"][0, 0] == 100.0
    np.testing.assert_array_equal(back["b"], [1, 2, 3])


@pytest.mark.parametrize(
    "segments, message",
    [
        ([fg.Segment("a", 0, 4, (4,)), fg.Segment("b", 5, 6, (1,))], "'b'.*gap"),
        ([fg.Segment("a", 0, 4, (4,)), fg.Segment("b", 3, 6, (3,))], "'b'.*overlaps"),
        ([fg.Segment("a", 0, 4, (4,)), fg.Segment("a", 4, 6, (2,))], "'a'.*duplicate"),
        ([fg.Segment("a", 0, 4, (4,)), fg.Segment("z", 4, 4, (0,))], "'z'.*non-positive"),
        ([fg.Segment("a", 0, 4, (2, 3))], "'a'.*shape"),
        ([fg.Segment("a", 1, 4, (3,))], "'a'.*gap"),
    ],
)
def test_bad_maps_are_refused_naming_the_segment(segments, message):
    with pytest.raises(ValueError, match=message):
        fg.SegmentMap(segments)


def test_map_that_does_not_match_theta_is_refused():
    segs = fg.SegmentMap.from_shapes({"W": (3, 3), "b": (3,)})
    with pytest.raises(ValueError, match="theta.*11.*12"):
        fg.check(lambda t: float(t @ t), np.zeros(11), np.zeros(11), segments=segs)
