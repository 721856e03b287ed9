"""Labelled evaluation data: scenes (bands + label raster) cut into labelled patches.

A ``LabelledScene`` holds every band as a reflectance array at its own GSD (NaN = no data) and a
label raster covering the same ground extent. ``scene_patches`` cuts it into square patches of
``patch_px`` pixels of the finest band, labels each with the majority class of the label pixels under
it (ignored values excluded) and keeps patches that are pure and valid enough. A ``PatchSet`` is the
result: per band an array ``[N, h_b, w_b]``, the labels (``[N]`` class index, or ``[N, K]`` bool for
multi-label data), a spatial block id per patch for a blocked train/test split, and band metadata.

Band-set and resolution changes used by the protocol are ``PatchSet`` operations: ``subset``
(missing bands), ``coarsen`` (coarser GSD, same footprint) and ``as_sensor`` (another sensor's band
set simulated by relabelling the nearest source bands with the target's wavelength/FWHM).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.errors import InputError
from pipelines.registry import BandSpec, load_registry


class EvalDataError(InputError):
    """A dataset that cannot be evaluated (one class, mismatched label grid, no usable patch, ...)."""


def band_dict(band: BandSpec) -> dict[str, Any]:
    """One band as the evaluation summary (``summary.json``) records it; the key order is the format."""
    return {
        "name": band.name,
        "wavelength_nm": band.center_wavelength_nm,
        "fwhm_nm": band.fwhm_nm,
        "gsd_m": band.gsd_m,
        "sensor": band.sensor,
    }


# ---------------------------------------------------------------------------------------------
# patch sets


@dataclass
class PatchSet:
    """Labelled patches of one band layout (every patch has every band)."""

    name: str
    bands: tuple[BandSpec, ...]
    pixels: list[np.ndarray]  # per band [N, h_b, w_b] float32 reflectance, NaN = invalid
    labels: np.ndarray  # [N] int64 class index, or [N, K] bool (multi-label)
    class_names: tuple[str, ...]
    groups: np.ndarray  # [N] int64 spatial block / source image (never split across train/test)
    multilabel: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.pixels) != len(self.bands):
            raise EvalDataError(f"{self.name}: {len(self.pixels)} pixel arrays for {len(self.bands)} bands")
        for b, p in zip(self.bands, self.pixels):
            if p.ndim != 3 or p.shape[0] != n:
                raise EvalDataError(
                    f"{self.name}: band {b.name} pixels have shape {p.shape}; expected [{n}, h, w]"
                )
        if len(self.groups) != n:
            raise EvalDataError(f"{self.name}: {len(self.groups)} group ids for {n} patches")
        if self.multilabel and (self.labels.ndim != 2 or self.labels.shape[1] != len(self.class_names)):
            raise EvalDataError(f"{self.name}: multi-label labels must be [N, {len(self.class_names)}] bool")
        if not self.multilabel and self.labels.ndim != 1:
            raise EvalDataError(f"{self.name}: single-label labels must be [N] class indices")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def extent_m(self) -> float:
        """Side of one patch on the ground (m)."""
        b, p = self.bands[0], self.pixels[0]
        return float(p.shape[1] * b.gsd_m)

    def take(self, idx: np.ndarray | Sequence[int]) -> PatchSet:
        idx = np.asarray(idx, dtype=np.int64)
        return dataclasses.replace(
            self,
            pixels=[p[idx] for p in self.pixels],
            labels=self.labels[idx],
            groups=self.groups[idx],
            meta=dict(self.meta),
        )

    def subset(self, band_idx: Sequence[int]) -> PatchSet:
        """Only the bands ``band_idx`` (indices into ``bands``), in that order."""
        band_idx = [int(i) for i in band_idx]
        if not band_idx:
            raise EvalDataError("empty band subset")
        return dataclasses.replace(
            self,
            bands=tuple(self.bands[i] for i in band_idx),
            pixels=[self.pixels[i] for i in band_idx],
            meta=dict(self.meta),
        )

    def coarsen(self, factor: int) -> PatchSet:
        """The same footprint at ``factor`` x coarser GSD: NaN-aware area average to
        ``max(1, round(h / factor))`` pixels; the new GSD keeps the extent exact."""
        if factor < 1:
            raise EvalDataError(f"coarsening factor must be >= 1, got {factor}")
        if factor == 1:
            return self
        bands, pixels = [], []
        for b, p in zip(self.bands, self.pixels):
            h, w = p.shape[1:]
            nh, nw = max(1, round(h / factor)), max(1, round(w / factor))
            pixels.append(area_resample(p, (nh, nw)))
            bands.append(dataclasses.replace(b, gsd_m=b.gsd_m * h / nh))
        return dataclasses.replace(self, bands=tuple(bands), pixels=pixels, meta=dict(self.meta))

    def as_sensor(
        self, target: Sequence[BandSpec], max_offset_nm: float | None = None
    ) -> tuple[PatchSet, list[str]]:
        """Simulate another sensor's band set: every target band takes the pixels of the source band
        nearest in centre wavelength (within ``max_offset_nm``, default max(30, mean FWHM) nm) and the
        target's name, wavelength, FWHM and sensor; the GSD stays the source's. Target bands with no
        source band near enough are dropped. -> (patch set, notes)."""
        chosen: list[tuple[int, BandSpec]] = []
        notes = []
        for t in target:
            j = min(
                range(len(self.bands)),
                key=lambda i: abs(self.bands[i].center_wavelength_nm - t.center_wavelength_nm),
            )
            s = self.bands[j]
            tol = max_offset_nm if max_offset_nm is not None else max(30.0, 0.5 * (s.fwhm_nm + t.fwhm_nm))
            off = abs(s.center_wavelength_nm - t.center_wavelength_nm)
            if off > tol:
                notes.append(
                    f"{t.key} ({t.center_wavelength_nm:.0f} nm): no source band within {tol:.0f} nm, dropped"
                )
                continue
            chosen.append((j, dataclasses.replace(t, gsd_m=s.gsd_m)))
            notes.append(f"{t.key} <- {s.key} ({off:.0f} nm apart)")
        if not chosen:
            raise EvalDataError("no target band has a source band near enough in wavelength")
        return (
            dataclasses.replace(
                self,
                bands=tuple(b for _, b in chosen),
                pixels=[self.pixels[j] for j, _ in chosen],
                meta=dict(self.meta),
            ),
            notes,
        )

    def check_labels(self) -> None:
        """At least two classes must be present (else a probe has nothing to separate)."""
        if len(self) == 0:
            raise EvalDataError(f"{self.name}: no labelled patch")
        if self.multilabel:
            present = [self.class_names[k] for k in np.flatnonzero(self.labels.any(axis=0))]
            varying = int((self.labels.any(axis=0) & ~self.labels.all(axis=0)).sum())
            if len(present) < 2 or varying < 1:
                raise EvalDataError(
                    f"{self.name}: the labels hold only {present or 'no class'}; evaluation needs at least "
                    "two classes (a probe cannot separate a single class)"
                )
            return
        present_idx = np.unique(self.labels)
        if len(present_idx) < 2:
            name = self.class_names[int(present_idx[0])] if len(present_idx) else "none"
            raise EvalDataError(
                f"{self.name}: every usable patch has the same class ({name!r}); evaluation needs at least "
                "two classes (check the label raster, the ignore values and the purity threshold)"
            )

    def class_counts(self) -> dict[str, int]:
        if self.multilabel:
            return {c: int(n) for c, n in zip(self.class_names, self.labels.sum(axis=0))}
        return {c: int((self.labels == k).sum()) for k, c in enumerate(self.class_names)}


def area_resample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, h, w] -> [N, H', W'] NaN-aware area average (adaptive pooling for non-divisible sizes)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None]
    valid = torch.isfinite(t)
    s = F.adaptive_avg_pool2d(torch.where(valid, t, torch.zeros_like(t)), size)
    c = F.adaptive_avg_pool2d(valid.float(), size)
    out = torch.where(c > 0, s / c.clamp(min=1e-12), torch.full_like(s, float("nan")))
    return out[:, 0].numpy().astype(np.float32)


def concat_patch_sets(sets: Sequence[PatchSet], name: str | None = None) -> PatchSet:
    """Stack patch sets with the same bands (group ids are offset so blocks never merge)."""
    if not sets:
        raise EvalDataError("nothing to concatenate")
    first = sets[0]
    for s in sets[1:]:
        if [b.key for b in s.bands] != [b.key for b in first.bands] or s.class_names != first.class_names:
            raise EvalDataError("patch sets to concatenate must have the same bands and classes")
    groups, off = [], 0
    for s in sets:
        groups.append(s.groups + off)
        off += int(s.groups.max()) + 1 if len(s) else 0
    return dataclasses.replace(
        first,
        name=name or first.name,
        pixels=[np.concatenate([s.pixels[i] for s in sets]) for i in range(len(first.bands))],
        labels=np.concatenate([s.labels for s in sets]),
        groups=np.concatenate(groups),
        meta=dict(first.meta),
    )


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class LabelledScene:
    """Bands at their native GSDs plus a label raster over the same ground extent.

    ``labels`` holds class indices ``0..K-1`` (``class_names[k]``) and ``-1`` for unlabelled /
    ignored pixels; ``make_label_raster`` builds it from raw label values.
    """

    name: str
    bands: tuple[BandSpec, ...]
    arrays: list[np.ndarray]  # per band [H_b, W_b] float32 reflectance, NaN = no data
    labels: np.ndarray  # [H_l, W_l] int64, -1 = ignore
    class_names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bands:
            raise EvalDataError(f"{self.name}: no band")
        if len(self.arrays) != len(self.bands):
            raise EvalDataError(f"{self.name}: {len(self.arrays)} arrays for {len(self.bands)} bands")
        ref = self.extent_m
        for b, a in zip(self.bands, self.arrays):
            if a.ndim != 2:
                raise EvalDataError(f"{self.name}: band {b.name} must be a 2-D array, got shape {a.shape}")
            ext = (a.shape[0] * b.gsd_m, a.shape[1] * b.gsd_m)
            if abs(ext[0] - ref[0]) > b.gsd_m or abs(ext[1] - ref[1]) > b.gsd_m:
                raise EvalDataError(
                    f"{self.name}: band {b.name} covers {ext[0]:.0f} x {ext[1]:.0f} m but band "
                    f"{self.bands[0].name} covers {ref[0]:.0f} x {ref[1]:.0f} m; all bands must cover one extent"
                )
        if self.labels.ndim != 2:
            raise EvalDataError(f"{self.name}: the label raster must be 2-D, got shape {self.labels.shape}")
        fh, fw = self.arrays[self.finest].shape
        lh, lw = self.labels.shape
        # the label grid must be an integer refinement or coarsening of the finest band grid
        for n_img, n_lab, axis in ((fh, lh, "rows"), (fw, lw, "columns")):
            ratio = n_lab / n_img
            if not (
                (math.isclose(ratio, round(ratio), rel_tol=1e-9) and round(ratio) >= 1)
                or math.isclose(1 / ratio, round(1 / ratio), rel_tol=1e-9)
            ):
                raise EvalDataError(
                    f"{self.name}: label grid mismatch: the label raster has {n_lab} {axis} but the finest "
                    f"band has {n_img}; the label raster must cover the image extent on a grid that is an "
                    "integer multiple or fraction of the image grid (resample it onto the image grid)"
                )
        if self.labels.min(initial=-1) < -1 or self.labels.max(initial=-1) >= len(self.class_names):
            raise EvalDataError(
                f"{self.name}: label indices must be -1 (ignore) or 0..{len(self.class_names) - 1}"
            )

    @property
    def finest(self) -> int:
        return min(range(len(self.bands)), key=lambda i: (self.bands[i].gsd_m, -self.arrays[i].size))

    @property
    def extent_m(self) -> tuple[float, float]:
        b, a = self.bands[0], self.arrays[0]
        return a.shape[0] * b.gsd_m, a.shape[1] * b.gsd_m


def make_label_raster(
    raw: np.ndarray,
    classes: Mapping[int, str] | None = None,
    ignore: Sequence[int] = (),
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Raw label values -> (class-index raster with -1 = ignore, class names).

    ``classes`` maps raw values to names (several values may share a name: they merge into one
    class; values not listed are ignored). Without it every value not in ``ignore`` is a class named
    by its value."""
    raw = np.asarray(raw)
    if classes is None:
        values = [int(v) for v in np.unique(raw) if int(v) not in set(ignore)]
        classes = {v: str(v) for v in values}
    names: list[str] = []
    for name in classes.values():
        if name not in names:
            names.append(name)
    out = np.full(raw.shape, -1, dtype=np.int64)
    for value, name in classes.items():
        if int(value) in set(ignore):
            continue
        out[raw == value] = names.index(name)
    return out, tuple(names)


def _band_patch_px(scene: LabelledScene, patch_px: int) -> list[int]:
    fin = scene.bands[scene.finest].gsd_m
    sizes = []
    for b in scene.bands:
        s = patch_px * fin / b.gsd_m
        if not math.isclose(s, round(s), rel_tol=1e-6) or round(s) < 1:
            raise EvalDataError(
                f"{scene.name}: a patch of {patch_px} px at {fin:g} m is {s:.2f} px of band {b.name} at "
                f"{b.gsd_m:g} m; choose a patch size that is a whole number of pixels in every band"
            )
        sizes.append(round(s))
    return sizes


def default_patch_px(scene: LabelledScene, want: int = 16) -> int:
    """The smallest patch side >= ``want`` finest-band pixels that is a whole number of pixels in
    every band (16 for one GSD or 10/20/60 m Sentinel-2 at 10 m; 18 for 20 m bands beside 60 m)."""
    for p in range(want, want * 16):
        try:
            _band_patch_px(scene, p)
            return p
        except EvalDataError:
            continue
    return want  # no whole size nearby: scene_patches says why


def scene_patches(
    scene: LabelledScene,
    patch_px: int | None = None,
    stride_px: int | None = None,
    min_purity: float = 0.6,
    min_labelled: float = 0.5,
    min_valid: float = 0.5,
    block_patches: int = 4,
) -> PatchSet:
    """Cut a scene into labelled patches (grid of ``patch_px`` finest-band pixels, no overlap by default;
    None: :func:`default_patch_px`).

    A patch is kept when at least ``min_labelled`` of its label pixels carry a class, its majority
    class holds at least ``min_purity`` of them, and at least ``min_valid`` of its finest-band pixels
    are valid (finite in every band). ``groups`` = spatial block of ``block_patches`` x
    ``block_patches`` patches, so the train/test split can keep neighbours together.
    """
    patch_px = patch_px or default_patch_px(scene)
    stride = stride_px or patch_px
    sizes = _band_patch_px(scene, patch_px)
    fi = scene.finest
    fh, fw = scene.arrays[fi].shape
    lh, lw = scene.labels.shape
    ry, rx = lh / fh, lw / fw
    valid_all = np.ones((fh, fw), dtype=bool)
    for a in scene.arrays:
        f = fh // a.shape[0] if a.shape[0] < fh else 1
        v = np.isfinite(a)
        if f > 1:
            v = np.repeat(np.repeat(v, f, axis=0), f, axis=1)[:fh, :fw]
        elif a.shape != (fh, fw):
            continue
        valid_all &= v
    k = len(scene.class_names)
    rows, cols, labels = [], [], []
    for r in range(0, fh - patch_px + 1, stride):
        for c in range(0, fw - patch_px + 1, stride):
            if valid_all[r : r + patch_px, c : c + patch_px].mean() < min_valid:
                continue
            lab = scene.labels[
                int(r * ry) : math.ceil((r + patch_px) * ry),
                int(c * rx) : math.ceil((c + patch_px) * rx),
            ]
            lab = lab[lab >= 0]
            n_total = max(1, round(patch_px * ry) * round(patch_px * rx))
            if lab.size < min_labelled * n_total:
                continue
            counts = np.bincount(lab, minlength=k)
            top = int(counts.argmax())
            if counts[top] < min_purity * lab.size:
                continue
            rows.append(r)
            cols.append(c)
            labels.append(top)
    if not labels:
        raise EvalDataError(
            f"{scene.name}: no patch of {patch_px} px passes the filters (labelled >= {min_labelled}, purity >= "
            f"{min_purity}, valid >= {min_valid}); lower them or check the label raster"
        )
    fin_gsd = scene.bands[fi].gsd_m
    pixels = []
    for b, a, s in zip(scene.bands, scene.arrays, sizes):
        scale = fin_gsd / b.gsd_m
        out = np.empty((len(rows), s, s), dtype=np.float32)
        for i, (r, c) in enumerate(zip(rows, cols)):
            r0, c0 = round(r * scale), round(c * scale)
            out[i] = a[r0 : r0 + s, c0 : c0 + s]
        pixels.append(out)
    block = patch_px * max(1, block_patches)
    rr, cc = np.asarray(rows), np.asarray(cols)
    groups = (rr // block) * (fw // block + 1) + cc // block
    return PatchSet(
        name=scene.name,
        bands=scene.bands,
        pixels=pixels,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=scene.class_names,
        groups=groups.astype(np.int64),
        meta={
            **scene.meta,
            "patch_px": patch_px,
            "patch_m": patch_px * fin_gsd,
            "rows": rr.tolist(),
            "cols": cc.tolist(),
        },
    )


def overlap_groups(groups: np.ndarray, rows: Sequence[int], cols: Sequence[int], patch_px: int) -> np.ndarray:
    """``groups`` [N] merged so that two patches of ``patch_px`` at (``rows``, ``cols``) that share a
    pixel are in one group (a blocked split then never puts a pixel in train and test) -> [N] ids 0..G-1.
    Patches cut on a grid never overlap; patches centred on labelled points may."""
    r, c = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    parent = list(range(int(groups.max()) + 1 if len(groups) else 0))

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    cells: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip((r // patch_px).tolist(), (c // patch_px).tolist())):
        cells.setdefault(key, []).append(i)
    for (cr, cc), members in cells.items():
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                for j in cells.get((cr + dr, cc + dc), ()):
                    for i in members:
                        if abs(r[i] - r[j]) < patch_px and abs(c[i] - c[j]) < patch_px:
                            a, b = find(int(groups[i])), find(int(groups[j]))
                            if a != b:
                                parent[max(a, b)] = min(a, b)
    roots = np.asarray([find(int(g)) for g in groups], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def balance(ps: PatchSet, max_per_class: int | None, seed: int) -> PatchSet:
    """At most ``max_per_class`` patches per class (seeded); multi-label sets are capped overall."""
    if not max_per_class or max_per_class <= 0:
        return ps
    rng = np.random.default_rng([seed, 7])
    if ps.multilabel:
        if len(ps) <= max_per_class * len(ps.class_names):
            return ps
        keep = np.sort(rng.choice(len(ps), max_per_class * len(ps.class_names), replace=False))
        return ps.take(keep)
    keep_list = []
    for k in range(len(ps.class_names)):
        idx = np.flatnonzero(ps.labels == k)
        if len(idx) > max_per_class:
            idx = rng.choice(idx, max_per_class, replace=False)
        keep_list.append(idx)
    keep = np.sort(np.concatenate(keep_list))
    return ps.take(keep)


def drop_empty_classes(ps: PatchSet) -> PatchSet:
    """Renumber single-label classes so that only classes with patches remain."""
    if ps.multilabel:
        has = np.asarray(ps.labels.any(axis=0), dtype=bool)
        return dataclasses.replace(
            ps,
            labels=ps.labels[:, has],
            class_names=tuple(c for c, h in zip(ps.class_names, has.tolist()) if h),
        )
    present = np.unique(ps.labels)
    remap = {int(v): i for i, v in enumerate(present)}
    return dataclasses.replace(
        ps,
        labels=np.asarray([remap[int(v)] for v in ps.labels], dtype=np.int64),
        class_names=tuple(ps.class_names[int(v)] for v in present),
    )


# ---------------------------------------------------------------------------------------------
# a synthetic labelled scene (tests, quick demos)

# The synthetic scene's bands: Sentinel-2 MSI bands of the registry, the 10/20 m ones read at 20 m,
# the 60 m ones at 60 m (in this order: the order fixes the random draws).
SYNTH_S2_BANDS = ("B02", "B03", "B04", "B05", "B8A", "B11", "B12", "B01", "B09")


def synthetic_bands() -> tuple[BandSpec, ...]:
    """The synthetic scene's band set (``SYNTH_S2_BANDS``), identities from the sensor registry."""
    s2 = load_registry().sensor("sentinel-2-msi")
    return tuple(dataclasses.replace(s2.band(n), gsd_m=max(20.0, s2.band(n).gsd_m)) for n in SYNTH_S2_BANDS)


# Ground-truth reflectance spectra of the synthetic classes, sampled at _CLASS_SPECTRA_NM; every band
# takes the value interpolated at its centre wavelength (a spectral library, not a band table).
_CLASS_SPECTRA_NM = (450.0, 550.0, 650.0, 850.0, 1600.0, 2200.0)
_CLASS_SPECTRA = {  # rough reflectance at _CLASS_SPECTRA_NM
    "water": (0.06, 0.05, 0.03, 0.02, 0.01, 0.005),
    "vegetation": (0.03, 0.08, 0.04, 0.40, 0.22, 0.10),
    "bare soil": (0.10, 0.15, 0.20, 0.26, 0.34, 0.30),
    "cloud": (0.55, 0.55, 0.56, 0.58, 0.40, 0.25),
    "urban": (0.12, 0.13, 0.14, 0.18, 0.22, 0.20),
}


def synthetic_scene(
    size_px: int = 192,
    n_classes: int = 4,
    cell_px: int = 12,
    seed: int = 0,
    noise: float = 0.02,
    nodata_frac: float = 0.05,
) -> LabelledScene:
    """A Sentinel-2-like scene (7 bands at 20 m, 2 at 60 m) with ``n_classes`` land-cover classes
    of distinct spectra laid out in square cells of ``cell_px`` px, with smooth brightness variation,
    noise and a no-data corner. ``size_px`` must be a multiple of 3 * ``cell_px`` / gcd."""
    if not 1 <= n_classes <= len(_CLASS_SPECTRA):
        raise EvalDataError(f"synthetic:K: K (classes) must be in 1..{len(_CLASS_SPECTRA)}, got {n_classes}")
    if size_px % 3:
        raise ValueError("size_px must be a multiple of 3 (60 m bands)")
    rng = np.random.default_rng(seed)
    names = list(_CLASS_SPECTRA)[:n_classes]
    n_cells = math.ceil(size_px / cell_px)
    cells = rng.integers(0, n_classes, size=(n_cells, n_cells))
    cls = np.repeat(np.repeat(cells, cell_px, axis=0), cell_px, axis=1)[:size_px, :size_px]
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    bright = 1.0 + 0.15 * np.sin(2 * np.pi * (xx + 0.3 * rng.random())) * np.cos(2 * np.pi * yy)
    anchors = np.asarray(_CLASS_SPECTRA_NM)
    arrays, bands = [], []
    invalid = (xx > 1 - nodata_frac**0.5) & (yy > 1 - nodata_frac**0.5)
    for band in synthetic_bands():
        spectra = np.array(
            [np.interp(band.center_wavelength_nm, anchors, _CLASS_SPECTRA[c]) for c in names],
            dtype=np.float32,
        )
        a = spectra[cls] * bright + noise * rng.standard_normal((size_px, size_px))
        a = a.astype(np.float32)
        a[invalid] = np.nan
        f = round(band.gsd_m / 20.0)
        if f > 1:
            a = area_resample(a[None], (size_px // f, size_px // f))[0]
        arrays.append(a)
        bands.append(band)
    labels = cls.astype(np.int64)
    return LabelledScene(
        name=f"synthetic-{n_classes}class",
        bands=tuple(bands),
        arrays=arrays,
        labels=labels,
        class_names=tuple(names),
        meta={"source": "synthetic", "seed": seed, "label_kind": "exact synthetic classes"},
    )
