"""The epoch plan: which chips, channels and shards every micro-batch of every rank uses.

A *block* is one (source, acquisition): the shards of every group of one (tile, collection) at one
time. The loader decodes a block once and slices all the chips it needs from memory, so the plan
is built around blocks (``docs/pretraining.md``, "Epoch plan"):

1. the blocks holding chips of the split are permuted, seeded by (seed, epoch), and dealt to
   ``S`` data *streams* (:func:`n_streams_for`: a power of two <= ``ChipConfig.streams``, the
   blocks, and the chips for 4 micro-batches per stream), each block to the stream with the fewest
   chips so far;
2. each stream cuts its blocks, in that order, into *windows* of ``ChipConfig.window_blocks``
   blocks (the shuffle buffer; more when they hold fewer than 4 micro-batches' worth of chips); within a window the chips of each layout are permuted and cut into
   micro-batches, and the window's micro-batches are permuted (seeded by seed, epoch, streams,
   stream, window);
3. channel sampling is fixed in the plan: stage 1 (which GSD groups are kept) per (window, layout),
   stage 2 (the band subset of each kept group) per chip and epoch, so the loader decodes for each
   block exactly the union of the (group, band) pairs its chips in the window keep, and never a band
   that none of them keeps;
4. every stream keeps the same number of micro-batches (the smallest count of any stream).

Global micro-batch ``i`` is micro-batch ``i // S`` of stream ``i % S`` (``S`` streams) and is a pure
function of (seed, epoch, i) and the index. Rank ``r`` of ``world`` (which must divide ``S``) takes
``i = p * world + r``: streams ``r, r + world, ...``, so rank shards are disjoint, each block is
decoded by one rank, and the global batch sequence is the same for every world size dividing ``S``
(and for any number of data-loader workers). A chip appears at most once per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aom_model.train.chips import ChipIndex

__all__ = ["BatchSpec", "EpochPlan", "Read", "Window", "build_plan", "epoch_plan"]

Mask = tuple[bool, ...]


@dataclass(frozen=True)
class BatchSpec:
    """One micro-batch: its chips and the channels each view of each chip keeps."""

    chips: tuple[int, ...]
    """Indices into ``ChipIndex.chips`` (one layout)."""
    keep_native: tuple[int, ...] = ()
    """Kept groups of the chips' source (stage 1)."""
    native_masks: tuple[tuple[Mask, ...], ...] = ()
    """Per chip, per kept native group: the bands kept (stage 2)."""
    keep_coarse: tuple[int, ...] | None = None
    """Kept groups of the coarse view's source (partner, else the chip's own); None: no coarse view."""
    coarse_factor: int = 1
    """1: the coarse view is the partner chip; f > 1: the chip's own groups area-averaged f x."""
    coarse_masks: tuple[tuple[Mask, ...], ...] = ()
    """Per chip, per kept coarse group: the bands kept."""


@dataclass(frozen=True)
class Read:
    """What the loader decodes for a window: bands of one group of one block."""

    source: int
    """Index into ``ChipIndex.sources``."""
    t: int
    """Index into ``Source.times``."""
    group: int
    """Index into ``Source.groups``."""
    bands: tuple[int, ...]
    """Band indices, ascending."""


@dataclass(frozen=True)
class Window:
    """Consecutive blocks of one stream and the micro-batches cut from their chips."""

    batches: tuple[BatchSpec, ...]
    """In delivery order."""
    first: int
    """Position in its stream of the first micro-batch."""


@dataclass(frozen=True)
class EpochPlan:
    """Per stream, its windows; every stream delivers ``per_stream`` micro-batches.

    Global micro-batch ``i`` is micro-batch ``i // streams`` of stream ``i % streams``; rank ``r`` of
    ``world`` (``world`` divides ``streams``) takes ``i = p * world + r``, i.e. streams ``r``,
    ``r + world``, ... : rank shards are disjoint and the global sequence is the same for every world
    size that divides ``streams``.
    """

    streams: tuple[tuple[Window, ...], ...]
    """Per stream (truncated at ``per_stream`` micro-batches)."""
    per_stream: int
    """Micro-batches per stream."""

    def __len__(self) -> int:
        return self.per_stream * len(self.streams)

    def locate(self, i: int) -> tuple[int, int, int]:
        """(stream, window, position in window) of global micro-batch ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"micro-batch {i} out of range 0..{len(self) - 1}")
        q, s = divmod(i, len(self.streams))
        for w, win in enumerate(self.streams[s]):
            if q < win.first + len(win.batches):
                return s, w, q - win.first
        raise IndexError(i)  # pragma: no cover - per_stream bounds every stream

    def batch(self, i: int) -> BatchSpec:
        s, w, j = self.locate(i)
        return self.streams[s][w].batches[j]

    def flat(self) -> list[BatchSpec]:
        """All micro-batches in global order."""
        return [self.batch(i) for i in range(len(self))]

    def check_world(self, world: int) -> None:
        if world < 1 or len(self.streams) % world:
            raise ValueError(
                f"the epoch plan has {len(self.streams)} data stream(s); the world size ({world}) must "
                "divide it (the streams are the largest power of two <= ChipConfig.streams / --streams, the "
                "(tile, time) blocks and the chips for 4 micro-batches each: use a power-of-two number of ranks "
                "<= streams, or more data)"
            )


def reads(index: ChipIndex, batches: Sequence[BatchSpec]) -> list[Read]:
    """The (block, group, bands) the batches use: exactly what the loader decodes for them."""
    need: dict[tuple[int, int, int], Mask] = {}  # the union of the masks that use each (block, group)

    def use(key: tuple[int, int, int], m: Mask) -> None:
        cur = need.get(key)
        if cur is None:
            need[key] = m
        elif cur != m:
            need[key] = tuple(a or b for a, b in zip(cur, m))

    for b in batches:
        for k, cid in enumerate(b.chips):
            c = index.chips[cid]
            for gi, m in zip(b.keep_native, b.native_masks[k]):
                use((c.source, c.t, gi), m)
            if b.keep_coarse is None:
                continue
            src, t = (c.source, c.t) if b.coarse_factor > 1 or c.partner is None else c.partner
            for gi, m in zip(b.keep_coarse, b.coarse_masks[k]):
                use((src, t, gi), m)
    out = []
    for (s, t, g), union in sorted(need.items()):
        bands = tuple(i for i, used in enumerate(union) if used)
        if bands:
            out.append(Read(s, t, g, bands))
    return out


def _band_mask(rng: np.random.Generator, n: int, augment: bool, all_prob: float) -> Mask:
    if not augment or rng.random() < all_prob:
        return (True,) * n
    k = int(rng.integers(1, n + 1))
    m = np.zeros(n, dtype=bool)
    m[rng.choice(n, size=k, replace=False)] = True
    return tuple(bool(v) for v in m)


def _keep_groups(rng: np.random.Generator, n: int, augment: bool, keep_prob: float) -> tuple[int, ...]:
    if not augment or n == 1:
        return tuple(range(n))
    keep = [g for g in range(n) if rng.random() < keep_prob]
    return tuple(keep) if keep else (int(rng.integers(n)),)


def build_plan(
    index: ChipIndex,
    chip_ids: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    streams: int | None = None,
    augment: bool = True,
    with_coarse: bool = True,
    drop_remainder: bool = True,
) -> EpochPlan:
    """The plan of one epoch (module docstring). ``streams`` defaults to ``ChipConfig.streams`` (at most
    one per block). ``drop_remainder=False`` (evaluation) keeps each layout's last, smaller
    micro-batch of a window; use it with one stream, which is never truncated."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    cfg = index.chip
    by_block: dict[tuple[int, int], list[int]] = {}
    for i in chip_ids:
        c = index.chips[i]
        by_block.setdefault((c.source, c.t), []).append(i)
    keys = sorted(by_block)
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(keys))
    n_streams = n_streams_for(
        cfg.streams if streams is None else streams, len(keys), len(chip_ids), batch_size
    )
    # deal blocks in permuted order to the stream with the fewest chips so far (balanced streams)
    dealt: list[list[tuple[int, int]]] = [[] for _ in range(n_streams)]
    load = [0] * n_streams
    for j in order:
        s = min(range(n_streams), key=lambda k: (load[k], k))
        dealt[s].append(keys[j])
        load[s] += len(by_block[keys[j]])
    per: list[list[Window]] = []
    for s, mine in enumerate(dealt):
        windows: list[Window] = []
        pos = 0
        for w, blocks in enumerate(
            _windows(mine, by_block, cfg.window_blocks, WINDOW_MIN_BATCHES * batch_size)
        ):
            rng = np.random.default_rng([seed, epoch, n_streams, s, w, 0x3B1D])
            batches = _window_batches(
                index, blocks, by_block, batch_size, seed, epoch, rng,
                augment=augment, with_coarse=with_coarse, drop_remainder=drop_remainder,
            )  # fmt: skip
            windows.append(Window(tuple(batches), pos))
            pos += len(batches)
        per.append(windows)
    per_stream = min(sum(len(w.batches) for w in ws) for ws in per)
    cut: list[tuple[Window, ...]] = []
    for ws in per:
        kept = [Window(w.batches[: per_stream - w.first], w.first) for w in ws if w.first < per_stream]
        cut.append(tuple(kept))
    return EpochPlan(tuple(cut), per_stream)


WINDOW_MIN_BATCHES = 4
"""A window also holds at least this many micro-batches' worth of chips (small blocks, small stores)."""


def n_streams_for(streams: int, n_blocks: int, n_chips: int, batch_size: int) -> int:
    """Streams of a plan: the largest power of two <= ``streams``, the number of blocks and the chips
    for ``WINDOW_MIN_BATCHES`` micro-batches per stream (independent of the world size)."""
    cap = max(1, min(streams, n_blocks, n_chips // (WINDOW_MIN_BATCHES * batch_size)))
    return 1 << (cap.bit_length() - 1)


def _windows(
    blocks: Sequence[tuple[int, int]],
    by_block: dict[tuple[int, int], list[int]],
    n_blocks: int,
    min_chips: int,
) -> list[list[tuple[int, int]]]:
    """Consecutive blocks cut into windows of >= ``n_blocks`` blocks and >= ``min_chips`` chips."""
    out: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    chips = 0
    for b in blocks:
        cur.append(b)
        chips += len(by_block[b])
        if len(cur) >= n_blocks and chips >= min_chips:
            out.append(cur)
            cur, chips = [], 0
    if cur:
        out.append(cur)
    return out


def _window_batches(
    index: ChipIndex,
    blocks: Sequence[tuple[int, int]],
    by_block: dict[tuple[int, int], list[int]],
    batch_size: int,
    seed: int,
    epoch: int,
    rng: np.random.Generator,
    *,
    augment: bool,
    with_coarse: bool,
    drop_remainder: bool,
) -> list[BatchSpec]:
    cfg = index.chip
    by_layout: dict[Any, list[int]] = {}
    for blk in blocks:
        for i in by_block[blk]:
            by_layout.setdefault(index.layout_key(index.chips[i]), []).append(i)

    def chip_masks(tag: int, cid: int, source: int) -> tuple[Mask, ...]:
        # stage 2: per chip and epoch (tag: native / own coarse / partner view); ``source`` is the
        # view's source (the partner's for tag 3). The loader decodes the union over a window's chips.
        crng = np.random.default_rng([seed, epoch, tag, cid])
        return tuple(
            _band_mask(crng, len(g.bands), augment, cfg.all_bands_prob) for g in index.sources[source].groups
        )

    out: list[BatchSpec] = []
    for key in sorted(by_layout, key=repr):
        ids = np.array(by_layout[key])
        ids = ids[rng.permutation(len(ids))]
        c0 = index.chips[int(ids[0])]
        src0 = index.sources[c0.source]
        # stage 1: per (window, layout)
        keep_native = _keep_groups(rng, len(src0.groups), augment, cfg.group_keep_prob)
        keep_coarse: tuple[int, ...] | None = None
        factor = 1
        if with_coarse:
            if c0.partner is not None:
                psrc = index.sources[c0.partner[0]]
                keep_coarse = _keep_groups(rng, len(psrc.groups), augment, cfg.group_keep_prob)
            else:
                f = cfg.coarse_factor
                sizes = [round(cfg.chip_m / g.gsd_m) for g in src0.groups]
                if f > 1 and all(s % f == 0 for s in sizes):
                    keep_coarse, factor = _keep_groups(rng, len(src0.groups), augment, cfg.group_keep_prob), f
        stop = len(ids) if not drop_remainder else len(ids) - batch_size + 1
        for s in range(0, max(stop, 0), batch_size):
            chips = tuple(int(v) for v in ids[s : s + batch_size])
            nm, cm = [], []
            for cid in chips:
                c = index.chips[cid]
                m = chip_masks(1, cid, c.source)
                nm.append(tuple(m[g] for g in keep_native))
                if keep_coarse is not None:
                    if factor > 1 or c.partner is None:
                        pm = chip_masks(2, cid, c.source)
                    else:
                        pm = chip_masks(3, cid, c.partner[0])
                    cm.append(tuple(pm[g] for g in keep_coarse))
            out.append(BatchSpec(chips, keep_native, tuple(nm), keep_coarse, factor, tuple(cm)))
    return [out[j] for j in rng.permutation(len(out))]


def epoch_plan(
    index: ChipIndex,
    chip_ids: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    drop_remainder: bool = True,
) -> list[BatchSpec]:
    """All micro-batches of one epoch in global order (see :func:`build_plan`)."""
    return build_plan(index, chip_ids, batch_size, seed, epoch, drop_remainder=drop_remainder).flat()
