"""fastgrad/sampling.py: which coordinates are checked (stratified per segment, distinct,
reproducible from the seed) and the keys of the random directions."""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.sampling import counts_per_segment, direction_key, sample_coordinates, unique_indices


def test_every_segment_is_sampled_even_a_tiny_bias_in_a_huge_vector():
    segs = fg.SegmentMap.from_shapes({"W": (1000, 1000), "b": (10,), "c": (1,)})
    idx = sample_coordinates(segs, samples=16, seed=3)
    ids = segs.segment_ids(idx)
    assert np.bincount(ids).tolist() == [16, 10, 1]
    assert len(set(idx.tolist())) == len(idx), "distinct coordinates"
    # reproducible from the seed; another seed, other coordinates
    np.testing.assert_array_equal(idx, sample_coordinates(segs, samples=16, seed=3))
    assert not np.array_equal(idx, sample_coordinates(segs, samples=16, seed=4))


def test_samples_per_segment_mapping_and_all():
    segs = fg.SegmentMap.from_shapes({"W": (20, 5), "b": (5,)})
    idx = sample_coordinates(segs, samples={"W": 7}, seed=0)
    assert np.bincount(segs.segment_ids(idx)).tolist() == [7, 5]
    assert sample_coordinates(segs, samples="all").tolist() == list(range(105))
    with pytest.raises(ValueError, match="'nope'"):
        sample_coordinates(segs, samples={"nope": 3})
    with pytest.raises(ValueError, match="samples"):
        sample_coordinates(segs, samples=0)


@pytest.mark.parametrize("samples", [1, 3, 16, 10**6])
def test_every_segment_gets_min_size_samples_distinct_sorted_coordinates(samples):
    shapes = {"W1": (40, 30), "b1": (30,), "W2": (30, 5), "b2": (5,), "s": (1,)}
    segs = fg.SegmentMap.from_shapes(shapes)
    idx = sample_coordinates(segs, samples=samples, seed=11)
    ids = segs.segment_ids(idx)
    sizes = [seg.size for seg in segs]
    assert np.bincount(ids, minlength=len(sizes)).tolist() == [min(n, samples) for n in sizes]
    for position, seg in enumerate(segs):
        own = idx[ids == position]
        assert np.all((seg.start <= own) & (own < seg.stop))
        assert np.all(np.diff(own) > 0)  # sorted and distinct within the segment
    assert counts_per_segment(segs, samples) == {n: min(s.size, samples) for n, s in
                                                 zip(segs.names, segs)}


def test_seeds_reproduce_and_differ_and_segments_are_independent_streams():
    segs = fg.SegmentMap.from_shapes({"W": (100, 100), "b": (50,)})
    draws = {seed: sample_coordinates(segs, 8, seed) for seed in range(20)}
    assert all(np.array_equal(draws[s], sample_coordinates(segs, 8, s)) for s in draws)
    assert len({d.tobytes() for d in draws.values()}) == 20
    # a segment added in front does not reshuffle the others' local choices
    more = fg.SegmentMap.from_shapes({"W": (100, 100), "b": (50,), "c": (70,)})
    np.testing.assert_array_equal(sample_coordinates(more, 8, 3)[:16], draws[3])


def test_mapping_leaves_unnamed_segments_at_the_default():
    segs = fg.SegmentMap.from_shapes({"W": (20, 5), "b": (5,), "c": (40,)})
    assert counts_per_segment(segs, {"c": 2}) == {"W": 16, "b": 5, "c": 2}
    assert counts_per_segment(segs, {"W": "all", "c": 100}) == {"W": 100, "b": 5, "c": 40}


@pytest.mark.parametrize("samples, error, words", [
    (0, ValueError, "samples['theta']: must be at least 1"),
    (-3, ValueError, "samples['theta']: must be at least 1"),
    (2.5, TypeError, "samples['theta']: expected a positive int or 'all'"),
    (True, TypeError, "samples['theta']: expected a positive int or 'all'"),
    (None, TypeError, "samples['theta']: expected a positive int or 'all'"),
    ("some", ValueError, "samples: expected an int, a mapping or 'all'"),
    ({"theta": 0}, ValueError, "samples['theta']: must be at least 1"),
    ({"theta": "half"}, ValueError, "samples: expected an int, a mapping or 'all'"),
    ({"W": 3, "theta": 2}, ValueError, "samples: names ['W'] are not segments"),
])
def test_bad_samples_are_refused_naming_the_argument(samples, error, words):
    segs = fg.SegmentMap.from_shapes({"theta": (10,)})
    with pytest.raises(error) as info:
        sample_coordinates(segs, samples=samples)
    assert str(info.value).startswith(words)


def test_direction_keys_are_deterministic_uint64_and_distinct():
    keys = [direction_key(seed, j) for seed in range(4) for j in range(250)]
    assert all(isinstance(k, np.uint64) for k in keys)
    assert len(set(int(k) for k in keys)) == len(keys)
    assert [direction_key(seed, j) for seed in range(4) for j in range(250)] == keys
    assert direction_key(0, 0) != 0 and direction_key(2**70, 1) == direction_key(2**70, 1)


@pytest.mark.parametrize("size", [0, 1, 7, 1000])
def test_unique_indices_is_numpys_unique(size):
    index = np.random.default_rng(size).integers(0, max(size // 3, 1), size=size)
    assert np.array_equal(unique_indices(index), np.unique(index))
    assert unique_indices(index).dtype == index.dtype
