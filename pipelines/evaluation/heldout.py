"""What the shipped checkpoint never saw, as the evaluation datasets address it.

The checkpoint was pretrained on the SOUTH half of T29UNU (cube tiles with ``iy <= 760`` of the
7 680 m grid, y < 5 844 480 m) and 40 tiles of 29RKH (``checkpoints/aom-tiny-real/pretrain-tiles.txt``;
``benchmarks/eval_scene_29rkh.py`` masks those). ``t29unu:north`` (``aom eval``'s default) reads only
the rows north of that line; a ``--window`` of it must stay inside it.
"""

from __future__ import annotations

from pipelines.evaluation.datasets import EvalDataError

# (row, col, height, width) at 60 m. The north half (y >= 5 844 480 m, rows 0-925) lies outside every
# cube tile the shipped checkpoint was pretrained on (tiles with iy <= 760 of the 7680 m grid).
T29UNU_HALVES: dict[str, tuple[int, int, int, int]] = {
    "north": (0, 0, 926, 1830),
    "south": (926, 0, 904, 1830),
}


def t29unu_window(
    name: str, window: tuple[int, int, int, int] | None = None
) -> tuple[int, int, int, int] | None:
    """What ``t29unu[:north|south]`` reads: the half, or ``window`` (absolute ROW, COL, HEIGHT, WIDTH
    of 60 m pixels), which must then lie inside that half: a crop of the held-out north that reached
    into the south half would evaluate the shipped checkpoint on pixels it was trained on. ``t29unu``
    (the whole scene) takes any crop. Raises :class:`EvalDataError` (exit 2) otherwise."""
    bounds = T29UNU_HALVES.get(name.lower().partition(":")[2])
    if window is None:
        return bounds
    r, c, h, w = (int(v) for v in window)
    br, bc, bh, bw = bounds or (0, 0, 1 << 30, 1 << 30)
    if h < 1 or w < 1 or r < br or c < bc or r + h > br + bh or c + w > bc + bw:
        where = (
            f"{name.lower()}: rows {br}-{br + bh - 1}, columns {bc}-{bc + bw - 1}" if bounds else "the scene"
        )
        raise EvalDataError(
            f"--window {r},{c},{h},{w} (rows {r}-{r + h - 1}, columns {c}-{c + w - 1}) is not inside {where}; "
            "HEIGHT and WIDTH must be >= 1 (use --dataset t29unu for a crop anywhere in the scene)"
        )
    return (r, c, h, w)
