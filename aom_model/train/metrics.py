"""Training metrics as JSON lines (one object per logged step) and a loss-curve PNG."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

from pipelines.storage import exists, filesystem, write_bytes_atomic


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # strict JSON
    return v


class MetricsLog:
    """Records kept in memory and written whole (atomically) to ``url`` on ``flush``; any fsspec URL."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.records: list[dict[str, Any]] = []

    def load(self, upto_step: int | None = None) -> None:
        """Read existing records (resume), dropping those after ``upto_step``."""
        self.records = []
        if not exists(self.url, self.storage_options):
            return
        fs, path = filesystem(self.url, self.storage_options)
        with fs.open(path, "rb") as fh:
            for line in fh.read().decode().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if upto_step is None or int(rec.get("step", 0)) <= upto_step:
                        self.records.append(rec)

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append({k: _clean(v) for k, v in record.items()})

    def flush(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in self.records)
        write_bytes_atomic(self.url, text.encode(), self.storage_options)


def loss_curve_png(records: list[dict[str, Any]], title: str = "AOM pretraining") -> bytes:
    """PNG bytes: every loss term against step (log y), learning rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [r["step"] for r in records]
    for key in ("loss", "recon", "stats", "align", "spectral"):
        ys = [r.get(key) for r in records]
        pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if any(r.get("loss") for r in records):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    lrs = [(r["step"], r["lr"]) for r in records if r.get("lr") is not None]
    if lrs:
        ax2 = ax.twinx()
        ax2.plot([p[0] for p in lrs], [p[1] for p in lrs], color="grey", ls=":", lw=1, label="lr")
        ax2.set_ylabel("learning rate", color="grey")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_loss_curve(
    url: str, records: list[dict[str, Any]], storage_options: Mapping[str, Any] | None = None
) -> None:
    if records:
        write_bytes_atomic(url, loss_curve_png(records), storage_options)
