"""Markdown report, plots and JSON summary of an ``EvalResult``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.evaluation.protocol import MODES, SETTINGS, EvalResult
from pipelines.redaction import redact_record

REFERENCE = "100%"
_REF_LABEL = {"band-missing": "all bands", "cross-sensor": "source bands", "cross-resolution": "1x"}


def _cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    if s.get("runs", s["draws"]) > 1:
        return f"{s['mean']:.3f} ± {s['std']:.3f}"
    return f"{s['mean']:.3f}"


def columns(result: EvalResult, setting: str) -> list[str]:
    conds = {(s["condition"], s["order"]) for s in result.summary if s["setting"] == setting}
    ordered = sorted(conds, key=lambda t: -t[1] if setting == "band-missing" else t[1])
    return [c for c, _ in ordered if c != REFERENCE]


def features_order(result: EvalResult) -> list[str]:
    rank = {"checkpoint": 0, "random-init": 1, "raw": 2}
    seen: dict[str, str] = {}
    for s in result.summary:
        seen.setdefault(s["features"], s["kind"])
    return sorted(seen, key=lambda f: (rank.get(seen[f], 9), f))


def _md_head(head: Sequence[str]) -> list[str]:
    """A Markdown table's header and separator rows (one separator cell per header cell)."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def table(result: EvalResult, setting: str, mode: str) -> str:
    cols = columns(result, setting)
    if not cols:
        return ""
    probes = sorted({s["probe"] for s in result.summary}, key=lambda p: (p != "linear", p))
    lines = _md_head(["features", "probe", _REF_LABEL[setting], *cols])
    for feat in features_order(result):
        for probe in probes:
            ref = result.lookup("band-missing", REFERENCE, feat, probe, mode)
            cells = [_cell(ref)] + [_cell(result.lookup(setting, c, feat, probe, mode)) for c in cols]
            lines.append("| " + " | ".join([feat, probe, *cells]) + " |")
    return "\n".join(lines)


def plot_band_missing(result: EvalResult, path: Path) -> bool:
    """Score vs fraction of bands kept, one panel per (mode, probe); error bars = std over draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in result.summary if s["setting"] == "band-missing"]
    if not rows:
        return False
    probes = sorted({s["probe"] for s in rows}, key=lambda p: (p != "linear", p))
    fig, axes = plt.subplots(
        len(MODES), len(probes), figsize=(4.5 * len(probes), 3.6 * len(MODES)), squeeze=False
    )
    for i, mode in enumerate(MODES):
        for j, probe in enumerate(probes):
            ax = axes[i][j]
            for feat in features_order(result):
                pts = sorted(
                    (
                        (s["order"], s["mean"], s["std"])
                        for s in rows
                        if s["features"] == feat and s["probe"] == probe and s["mode"] == mode
                    ),
                )
                if not pts:
                    continue
                xs = [100 * p[0] for p in pts]
                ax.errorbar(
                    xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=feat
                )
            ax.set_title(f"{probe} probe, {mode}")
            ax.set_xlabel("bands kept (%)")
            ax.set_ylabel(result.metric)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.invert_xaxis()
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{result.dataset['name']}: {result.metric} vs bands kept")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_settings(result: EvalResult, path: Path) -> bool:
    """Bars per condition of cross-sensor and cross-resolution (linear probe, transfer and refit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = [s for s in ("cross-sensor", "cross-resolution") if columns(result, s)]
    if not settings:
        return False
    probe = "linear" if any(s["probe"] == "linear" for s in result.summary) else result.summary[0]["probe"]
    feats = features_order(result)
    fig, axes = plt.subplots(
        len(MODES), len(settings), figsize=(5.5 * len(settings), 3.6 * len(MODES)), squeeze=False
    )
    for i, mode in enumerate(MODES):
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            cols = [REFERENCE, *columns(result, setting)]
            x = np.arange(len(cols))
            w = 0.8 / max(1, len(feats))
            for k, feat in enumerate(feats):
                vals = []
                for c in cols:
                    s = result.lookup("band-missing" if c == REFERENCE else setting, c, feat, probe, mode)
                    vals.append(s["mean"] if s else math.nan)
                ax.bar(x + k * w - 0.4 + w / 2, vals, width=w, label=feat)
            ax.set_xticks(
                x, [_REF_LABEL[setting] if c == REFERENCE else c for c in cols], fontsize=8, rotation=15
            )
            ax.set_ylim(0, 1.02)
            ax.set_ylabel(result.metric)
            ax.set_title(f"{setting}, {probe} probe, {mode}")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


_FEATURE_TEXT = {
    "pooled": "pooled embedding (mean of position tokens, what `aom embed` writes)",
    "spectral": "spectral embedding (per spectral query, the band token the encoder infers there)",
    "band-tokens": "band-token features (per band the mean of its band tokens; diagnostic, not the product)",
}


def _goal_lines(result: EvalResult) -> list[str]:
    out = _goal_lines_for(result, result.goals)
    for g in (result.goals.get("other_features") or {}).values():
        out += ["", *_goal_lines_for(result, g)]
    return out


def _goal_lines_for(result: EvalResult, g: dict[str, Any]) -> list[str]:
    if not g.get("checkpoint"):
        return ["No checkpoint in this run (random-init only): goals not evaluated."]
    feats = str(g.get("features", "pooled"))
    out = [f"Features: the checkpoint's {_FEATURE_TEXT.get(feats, feats)}, `{g['checkpoint']}`.", ""]
    if "beats_random_init" in g:
        for mode in MODES:
            b = g["beats_random_init"][mode]
            if b["met"]:
                out.append(f"- checkpoint beats random-init in every setting ({mode}): **met**")
            else:
                out.append(
                    f"- checkpoint beats random-init in every setting ({mode}): **not met** "
                    f"(ahead in {b['cells_won']} of {b['cells']} setting x condition x probe cells); behind in: "
                    + "; ".join(b["not_met_in"])
                )
    for probe, r in g.get("all_bands_vs_raw", {}).items():
        out.append(
            f"- {probe} probe, all bands: {r['checkpoint']:.3f} vs raw-band statistics {r['raw']:.3f}: "
            f"**{'met' if r['met'] else 'not met'}** (target >= raw)"
        )
    for mode in MODES:
        for probe, r in g.get("half_bands_retention", {}).get(mode, {}).items():
            out.append(
                f"- {probe} probe, {mode}: 50 % of bands keeps {100 * r['retention']:.1f} % of the all-band "
                f"{result.metric} ({r['half_bands']:.3f} / {r['all_bands']:.3f}): **{'met' if r['met'] else 'not met'}** (target >= 90 %)"
            )
    return out


def render_markdown(result: EvalResult, plots: Sequence[str] = ()) -> str:
    d = result.dataset
    lines = [
        f"# AOM robustness evaluation: {d['name']}",
        "",
        f"Metric: **{result.metric}** on held-out patches ({d['split']}; {d['train_patches']} train / "
        f"{d['test_patches']} test patches of {d['patch_m']:.0f} m; {d.get('splits', 1)} seeded split(s), "
        "scores averaged; ± = std over band draws x splits). Wall time "
        f"{result.wall_s:.0f} s.",
        "",
        "## Features",
        "",
    ]
    for e in result.extractors:
        lines.append(f"- **{e['name']}** ({e['kind']})" + (f": `{e['source']}`" if e.get("source") else ""))
    lines += [
        "",
        "## Data",
        "",
        f"- label kind: {d['meta'].get('label_kind', 'user labels')}",
        f"- source: {d['meta'].get('source', '-')}",
        "- bands: "
        + ", ".join(f"{b['name']} ({b['wavelength_nm']:.0f} nm, {b['gsd_m']:g} m)" for b in d["bands"]),
        "- patches per class: " + ", ".join(f"{k} {v}" for k, v in d["class_counts"].items()),
        *(
            [f"- input statistics (bands without checkpoint statistics) from: {d['stats_pool']}"]
            if d.get("stats_pool")
            else []
        ),
        *(
            [
                f"- classes left out: {', '.join(f'{k} ({v})' for k, v in d['meta']['classes_dropped'].items())}"
            ]
            if d["meta"].get("classes_dropped")
            else []
        ),
        "",
        "## Goals",
        "",
        *_goal_lines(result),
        "",
    ]
    for setting in SETTINGS:
        if not columns(result, setting):
            continue
        lines += [f"## {setting}", ""]
        if setting == "band-missing":
            lines.append(f"Random band subsets ({result.config['draws']} seeded draws per fraction).")
        elif setting == "cross-sensor":
            lines.append(
                "Target sensors simulated from the source bands (nearest wavelength, target metadata)."
            )
        else:
            lines.append("Same footprint, area-averaged to a coarser GSD.")
        lines.append("")
        for mode in MODES:
            lines += [
                f"**{mode}** ({'probe fitted on all bands, native GSD' if mode == 'transfer' else 'probe refitted on the changed input'})",
                "",
            ]
            lines += [table(result, setting, mode), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["## Conditions", ""]
    for c in result.conditions:
        note = f" ({'; '.join(c['notes'])})" if c["notes"] else ""
        lines.append(
            f"- {c['setting']} {c['condition']} draw {c['draw']}: {', '.join(c['bands'])} at {c['gsd_m']} m{note}"
        )
    lines.append("")
    lines += _product_lines(result.product)
    return "\n".join(lines)


def _chip_text(chip: dict[str, Any]) -> str:
    """The chip layout of a product run in words (``ChipLayout.to_dict``)."""
    if not chip:
        return "layout not recorded"
    blend = (
        f"seams blended over {chip['blend_tokens']} tokens each side ({chip['blend_window']})"
        if chip.get("blend_tokens")
        else "cores only (no seam blending)"
    )
    return f"{chip['core_tokens']}-token cores + {chip['margin_tokens']}-token margins, {blend}"


def _cosine_cells(m: dict[str, Any], shifts: Sequence[int]) -> list[str]:
    """Table cells of a product run's cosines (raw, or its ``centred`` block): shift consistency per
    shift, unrelated tokens, seam inside / across / contrast."""
    seams = m["seams"]
    cells = [f"{m['shift_consistency'].get(str(s), float('nan')):.3f}" for s in shifts]
    cells += [f"{m['unrelated_cosine']:.3f}", f"{seams['inside']:.3f}", f"{seams['across']:.3f}"]
    return [*cells, f"{seams['contrast']:.4f}"]


def _precision_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _retrieval_text(r: dict[str, Any]) -> str:
    """How the retrieval precision was measured, for the report's legend."""
    if not r:
        return "not measured"
    return (
        f"k = {r['k']}, up to {r['queries']} queries per label class, tokens within "
        f"{r['exclude_tokens']} of the query left out, a token labelled when its class covers "
        f"{100 * r['purity']:.0f} % of its pixels; {r['labelled_tokens']} labelled tokens"
    )


def _stored_text(product: Sequence[dict[str, Any]]) -> str:
    """Which encoding each embedding's "as stored" columns went through, for the legend."""
    seen = {
        p["embedding"]: ((p.get("retrieval") or {}).get("stored") or {}).get("quantisation") for p in product
    }
    return ", ".join(f"{e}: {q}" for e, q in seen.items() if q) or "not measured"


def _product_lines(product: Sequence[dict[str, Any]]) -> list[str]:
    """The product metrics section (``pipelines.evaluation.product``), empty without them."""
    if not product:
        return []
    shifts = sorted({int(k) for p in product for k in p["shift_consistency"]})
    cosines = [*(f"shift {s}" for s in shifts), "unrelated", "seam: inside", "across", "contrast"]
    lines = [
        "## Product metrics (`aom embed-raster` output)",
        "",
        "Chip-position share: variance explained by a token's place in its chip core (goal <= 0.15), beside "
        "its chance level on this grid (what tokens without any position give; the goal can only be shown "
        "when it is below 0.15); shift s: "
        "mean cosine of the same ground token after cropping the raster by s tokens (goal >= 0.97), beside "
        "unrelated tokens; seam contrast: adjacent-token cosine inside a chip minus across a chip seam "
        "(goal < 0.01); retrieval: macro precision@k of a similarity search over the output, by raw cosine "
        "and by whitened cosine (`aom query similar --metric whitened`; "
        + _retrieval_text(product[0].get("retrieval") or {})
        + "); as stored: the same two searches on the values `aom embed` stores by default ("
        + _stored_text(product)
        + "). Chips: "
        + _chip_text(product[0].get("chip") or {})
        + ".",
        "",
        *_md_head(
            [
                "embedding",
                "model",
                "token (m)",
                "chip-position share",
                "chance",
                *cosines,
                "retrieval: cosine",
                "whitened",
                "as stored: cosine",
                "whitened",
            ]
        ),
    ]
    for p in product:
        cells = [p["embedding"], p["kind"], f"{p['token_m']:g}", f"{p['chip_position_share']:.3f}"]
        cells.append(f"{p.get('chip_position_chance', float('nan')):.3f}")
        r = p.get("retrieval") or {}
        stored = r.get("stored") or {}
        tail = [
            _precision_cell(r.get("precision")),
            _precision_cell((r.get("whitened") or {}).get("precision")),
            _precision_cell(stored.get("precision")),
            _precision_cell((stored.get("whitened") or {}).get("precision")),
        ]
        lines.append("| " + " | ".join(cells + _cosine_cells(p, shifts) + tail) + " |")
    lines += [
        "",
        "The same cosines on tokens centred on the output's mean token (raw cosines are near 1 for every "
        "pair when all tokens share one large component):",
        "",
        *_md_head(["embedding", "model", *cosines]),
    ]
    for p in product:
        cells = [p["embedding"], p["kind"], *_cosine_cells(p["centred"], shifts)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def write_report(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """-> paths of report.md, summary.json and the plots written into ``out_dir``. URLs in the result
    (the checkpoint's, a dataset's) are written redacted (:func:`pipelines.redaction.redact_record`)."""
    clean = redact_record(result.to_dict())
    result = EvalResult(**clean)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    plots = []
    if plot_band_missing(result, out / "band_missing.png"):
        plots.append("band_missing.png")
        paths["band_missing_plot"] = out / "band_missing.png"
    if plot_settings(result, out / "cross_settings.png"):
        plots.append("cross_settings.png")
        paths["cross_settings_plot"] = out / "cross_settings.png"
    (out / "report.md").write_text(render_markdown(result, plots))
    paths["report"] = out / "report.md"
    (out / "summary.json").write_text(json.dumps(clean, indent=1, default=str))
    paths["summary"] = out / "summary.json"
    return paths
