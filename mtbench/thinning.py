"""Binary thinning as MATLAB's `bwmorph(mask, 'thin', Inf)`: edge ground truth and the boundary evaluation.

Used by the PASCAL-Context loader (edges from LabelMaps) and the boundary meter (mtbench.metrics.boundary);
it sits outside both so that data does not import metrics.
"""

from __future__ import annotations

import numpy as np

# The 8-neighbour code of a pixel whose neighbours are all foreground (one bit per neighbour).
ALL_NEIGHBOURS = (1 << 8) - 1


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Return the deletion tables of the two subiterations, indexed by the 8-neighbour code.

    Bit k-1 of the code is neighbour x_k, counted counter-clockwise from x1 = east (row r, col c+1):
    x2 = north-east, x3 = north (row r-1), x4 = north-west, x5 = west, x6 = south-west, x7 = south,
    x8 = south-east. A foreground pixel is deleted in subiteration 1 if G1, G2 and G3 hold, in
    subiteration 2 if G1, G2 and G3' hold (Guo & Hall 1989, as MATLAB's bwmorph 'thin').
    """
    codes = np.arange(256)
    x = [None] + [(codes >> (k - 1)) & 1 for k in range(1, 9)]  # x[1..8]
    x.append(x[1])  # x9 = x1
    g1 = sum(((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1])) for i in range(1, 5)) == 1
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    g2 = (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0
    g3p = ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
    return g1 & g2 & g3, g1 & g2 & g3p


_THIN_DELETE = _thin_luts()


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary map to 1-pixel-wide lines, as MATLAB's `bwmorph(mask, 'thin', Inf)`.

    Parallel two-subiteration thinning (see `_thin_luts`), repeated until an iteration deletes nothing.
    Each subiteration decides on the state at its start, as the parallel algorithm does, but only looks at
    the pixels that could change: a pixel whose 8-neighbourhood is unchanged since the last subiteration of
    the same kind kept it is kept again, and interior pixels (all 8 neighbours set) are never deleted.
    Returns a new bool array of the same shape.
    """
    if mask.ndim != 2:
        raise ValueError(f"thin expects a 2-D map; got shape {mask.shape}")
    return thin_stack(mask[None])[0]


def thin_stack(masks: np.ndarray) -> np.ndarray:
    """Thin each map of an (N, H, W) stack as `thin` does, in one pass over all of them.

    The maps are laid one under the other with a zero row between them: thinning looks at 8-neighbourhoods
    only and takes the outside of an image as zero, so each map thins exactly as it would alone, while the
    per-subiteration work (numpy calls) is shared by the whole stack. Used for the many thresholds of one
    boundary map. Returns a new (N, H, W) bool array.
    """
    if masks.ndim != 3:
        raise ValueError(f"thin_stack expects an (N, H, W) stack; got shape {masks.shape}")
    n, h, w = masks.shape
    img = np.zeros((n * (h + 1) + 1, w + 2), dtype=np.uint8)
    img[:-1].reshape(n, h + 1, w + 2)[:, 1:, 1:-1] = masks != 0
    _thin_in_place(img)
    return img[:-1].reshape(n, h + 1, w + 2)[:, 1:, 1:-1].astype(bool)


def _thin_in_place(img: np.ndarray) -> None:
    """Thin the uint8 {0, 1} image `img` in place; its first and last rows and columns must be zero."""
    flat = img.ravel()
    stride = img.shape[1]
    offsets = np.array([1, 1 - stride, -stride, -1 - stride, -1, stride - 1, stride, stride + 1])

    def codes(idx: np.ndarray) -> np.ndarray:  # bit k-1 = neighbour x_k (8 flat gathers: 4x packbits' speed)
        code = np.take(flat, idx + offsets[0])
        for k in range(1, 8):
            bit = np.take(flat, idx + offsets[k])
            bit <<= k
            code |= bit
        return code

    fg = np.flatnonzero(flat)
    first = fg[codes(fg) != ALL_NEIGHBOURS]  # foreground pixels touching the background
    dirty = [first, first.copy()]  # pixels to look at in the next subiteration of each kind
    in_dirty = [np.zeros_like(flat), np.zeros_like(flat)]
    in_dirty[0][first] = in_dirty[1][first] = 1
    slot = np.zeros(flat.size, dtype=np.intp)
    kind = 0
    while dirty[0].size or dirty[1].size:
        cand = dirty[kind]
        in_dirty[kind][cand] = 0
        dirty[kind] = cand[:0]
        cand = cand[flat[cand] == 1]
        gone = cand[_THIN_DELETE[kind][codes(cand)]]  # decided on the state at the start of the subiteration
        if gone.size:
            flat[gone] = 0
            near = (gone[:, None] + offsets[None, :]).ravel()
            near = near[flat[near] == 1]
            slot[near] = np.arange(near.size)
            near = near[slot[near] == np.arange(near.size)]  # each pixel once
            for k in (0, 1):
                new = near[in_dirty[k][near] == 0]
                in_dirty[k][new] = 1
                dirty[k] = np.concatenate([dirty[k], new])
        kind = 1 - kind
