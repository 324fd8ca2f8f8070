"""First-layer weights as images: a grid to look at and a smoothness score to test.

Layout convention (as in CS231n, ``scores = X @ W``): ``W`` has shape ``(D, F)`` with
``D = prod(image_shape)`` inputs and one filter per **column**.  Also accepted when unambiguous:
``(F, D)`` (one filter per row, e.g. ``torch.nn.Linear.weight``) and ``(F, *image_shape)``.
When both axes equal ``D``, columns are taken as filters.  ``image_shape`` is ``(h, w)`` or
``(h, w, c)`` with channels last (``c`` is 1 or 3) and describes how one input vector is laid out
(row-major, as ``image.reshape(-1)`` gives it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidType, InvalidValue

#: Below this mean smoothness the first-layer filters look like noise (white noise scores ~0).
NOISY_FILTER_THRESHOLD = 0.1


def _image_shape(image_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError:
        raise InvalidType(f"image_shape: expected a tuple like (8, 8), got {image_shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InvalidValue(f"image_shape: expected (h, w) or (h, w, c), got {image_shape!r}")
    if len(shape) == 3 and shape[2] not in (1, 3):
        raise InvalidValue(f"image_shape: channels (last axis) must be 1 or 3, got {image_shape!r}")
    if shape[0] < 2 and shape[1] < 2:
        raise InvalidValue(f"image_shape: an image needs at least 2 pixels, got {image_shape!r}")
    return shape


def filters_as_images(W: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """``W`` rearranged as ``(F, h, w, c)`` float64 images (a new array; ``W`` is not modified).

    >>> W1 = np.random.randn(64, 10)            # 10 filters over 8x8 inputs
    >>> filters_as_images(W1, (8, 8)).shape
    (10, 8, 8, 1)
    """
    shape = _image_shape(image_shape)
    W = np.asarray(W)
    if W.dtype.kind not in "fiu":
        raise InvalidType(f"W: expected a numeric array, got dtype {W.dtype}")
    D = math.prod(shape)
    if W.ndim == 2 and W.shape[0] == D:
        filters = W.T
    elif W.ndim == 2 and W.shape[1] == D:
        filters = W
    elif W.ndim == len(shape) + 1 and W.shape[1:] == shape:
        filters = W.reshape(W.shape[0], D)
    else:
        raise InvalidValue(
            f"W: shape {W.shape} does not match image_shape {shape} (expected (D, F), (F, D) with "
            f"D = {D}, or (F, *image_shape))"
        )
    if filters.shape[0] < 1:
        raise InvalidValue(f"W: no filters in shape {W.shape}")
    channels = shape[2] if len(shape) == 3 else 1
    return np.array(filters, dtype=np.float64).reshape(filters.shape[0], shape[0], shape[1], channels)


def filter_smoothness(W: np.ndarray, image_shape: Sequence[int]) -> float:
    """Mean smoothness of the filters in ``W``: ~1 smooth, ~0 white noise, < 0 checkerboard.

    Per filter, ``1 - mean((neighbour difference)**2) / (2 * variance)`` over horizontal and
    vertical neighbours: independent noise pixels give 0, because E[(a - b)**2] = 2 var.
    Constant filters carry no pattern and are left out.

    Parameters
    ----------
    W : array_like
        First-layer weights, one filter per column ``(D, F)`` (CS231n's layout), per row
        ``(F, D)``, or ``(F, *image_shape)``; ``D`` is the number of pixels times channels.
        Not modified.
    image_shape : sequence of int
        ``(h, w)`` or ``(h, w, c)`` of one input image.

    Returns
    -------
    float
        The mean score over the non-constant filters; NaN when all are constant.  Trained
        first-layer filters score well above ``NOISY_FILTER_THRESHOLD``, noise near 0.

    Raises
    ------
    TypeError
        ``W`` is not numeric, or ``image_shape`` is not a sequence of ints.
    ValueError
        ``image_shape`` is not (h, w) or (h, w, c) with 1 or 3 channels, ``W``'s shape does not
        fit it (the message names both), or ``W`` holds no filter.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> abs(filter_smoothness(rng.standard_normal((64, 100)), (8, 8))) < 0.05   # noise
    True
    """
    scores = filter_smoothness_scores(W, image_shape)
    finite = scores[np.isfinite(scores)]
    return float(finite.mean()) if finite.size else math.nan


def filter_smoothness_scores(W: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """The smoothness score of each filter (see :func:`filter_smoothness`), NaN for constant ones.

    >>> W1 = np.random.randn(64, 10)
    >>> filter_smoothness_scores(W1, (8, 8)).shape
    (10,)
    """
    images = filters_as_images(W, image_shape)
    centered = images - images.mean(axis=(1, 2, 3), keepdims=True)
    variance = (centered**2).mean(axis=(1, 2, 3))
    diffs = []
    if images.shape[2] > 1:
        diffs.append(((images[:, :, 1:] - images[:, :, :-1]) ** 2).reshape(len(images), -1))
    if images.shape[1] > 1:
        diffs.append(((images[:, 1:] - images[:, :-1]) ** 2).reshape(len(images), -1))
    mean_sq_diff = np.concatenate(diffs, axis=1).mean(axis=1)
    scale = np.abs(images).max(axis=(1, 2, 3))
    flat = variance <= (1e-12 * scale) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = 1.0 - mean_sq_diff / (2.0 * variance)
    scores[flat] = np.nan
    return scores


def filter_grid(W: np.ndarray, image_shape: Sequence[int], *, columns: int | None = None,
                padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """First-layer weights as one image: filters side by side, each scaled to [0, 1].

    Parameters
    ----------
    W : array_like
        First-layer weights, one filter per column ``(D, F)`` (CS231n's layout), per row
        ``(F, D)``, or ``(F, *image_shape)``; ``D`` is the number of pixels times channels.
        Not modified.
    image_shape : sequence of int
        ``(h, w)`` or ``(h, w, c)`` of one input image.
    columns : int, optional
        Filters per row (default: a square-ish grid, ``ceil(sqrt(F))``).
    padding : int
        Pixels between and around the filters (default 1).
    pad_value : float
        Value of the padding pixels (default 1.0: white).

    Returns
    -------
    numpy.ndarray
        A new 2-D array for grey images (``image_shape`` (h, w) or (h, w, 1)), an (H, W, 3) array
        for colour ones; each filter is scaled to [0, 1] on its own.

    Raises
    ------
    TypeError
        ``W`` is not numeric, or ``image_shape`` is not a sequence of ints.
    ValueError
        ``image_shape`` is not (h, w) or (h, w, c) with 1 or 3 channels, ``W``'s shape does not
        fit it (the message names both), ``W`` holds no filter, ``padding`` is negative or
        ``columns`` is not a positive int.

    Examples
    --------
    >>> W1 = np.random.randn(64, 32)            # 32 hidden units over 8x8 digit images
    >>> filter_grid(W1, image_shape=(8, 8)).shape
    (55, 55)
    """
    images = filters_as_images(W, image_shape)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise InvalidValue(f"padding: expected a non-negative int, got {padding!r}")
    count, h, w, c = images.shape
    if columns is None:
        columns = math.ceil(math.sqrt(count))
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise InvalidValue(f"columns: expected a positive int, got {columns!r}")
    rows = math.ceil(count / columns)
    grid = np.full((rows * h + (rows + 1) * padding, columns * w + (columns + 1) * padding, c),
                   float(pad_value))
    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = images.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = (images - low) / np.where(span > 0, span, 1.0)
    for k in range(count):
        r, q = divmod(k, columns)
        top = padding + r * (h + padding)
        left = padding + q * (w + padding)
        grid[top:top + h, left:left + w] = scaled[k]
    return grid[:, :, 0] if c == 1 else grid
