"""What a cube run reports: one :class:`TileOutcome` per tile and the run's :class:`RunSummary`
(counts, reasons, the exit code of ``aom cubes``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.runs import TileStatus
from pipelines.storage import redact_url


@dataclass
class TileOutcome:
    """What happened to one tile in a run.

    ``status``: a :class:`~pipelines.runs.TileStatus` outcome: ``done`` (written, has data),
    ``empty`` (record written, no usable pixels), ``skipped`` (recorded by an earlier run and left
    as it is), ``failed`` (not recorded by this run: retried next run). A failed tile's ``reason``
    says why, and ``retryable`` whether a later run may pass (the flow run's retry is kept for it).
    """

    tile_id: str
    status: TileStatus
    reason: str = ""
    groups: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    output_mb: float = 0.0
    record_status: str = ""
    """A skipped tile's recorded status (``complete`` or ``empty``): only a complete one is usable."""
    retryable: bool = True
    """A failed tile: whether a later run may pass, decided where its failure was caught
    (:func:`pipelines.cubes.tile_failure_retryable`: a server or network error, a lost worker,
    another live run holding its lease, assets unreachable now). False for a failure no rerun
    passes (refused access, a file the process may not read included, a 404, bad data, a bug):
    the ingest flow's retry is withdrawn when every failed tile is one. True for the other statuses (nothing to retry)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile_id": self.tile_id,
            "status": str(self.status),
            "reason": self.reason,
            "groups": list(self.groups),
            "skipped": list(self.skipped),
            "elapsed_s": round(self.elapsed_s, 3),
            "output_mb": round(self.output_mb, 3),
            "retryable": self.retryable,
        }


@dataclass
class RunSummary:
    """Tiles done, skipped (with reasons) and failed; items/assets left out, per tile."""

    out_url: str
    outcomes: list[TileOutcome] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def tiles_done(self) -> list[str]:
        return [o.tile_id for o in self.outcomes if o.status == TileStatus.DONE]

    @property
    def tiles_skipped(self) -> dict[str, str]:
        """Tiles not written by this run: already complete, or empty (with why)."""
        return {
            o.tile_id: o.reason for o in self.outcomes if o.status in (TileStatus.SKIPPED, TileStatus.EMPTY)
        }

    @property
    def tiles_empty(self) -> dict[str, str]:
        return {o.tile_id: o.reason for o in self.outcomes if o.status == TileStatus.EMPTY}

    @property
    def tiles_failed(self) -> dict[str, str]:
        return {o.tile_id: o.reason for o in self.outcomes if o.status == TileStatus.FAILED}

    @property
    def tiles_failed_retryable(self) -> dict[str, bool]:
        """Failed tile -> whether a later run may pass (:attr:`TileOutcome.retryable`); same keys as
        :attr:`tiles_failed`."""
        return {o.tile_id: o.retryable for o in self.outcomes if o.status == TileStatus.FAILED}

    @property
    def items_skipped(self) -> list[dict[str, Any]]:
        return [{"tile_id": o.tile_id, **s} for o in self.outcomes for s in o.skipped]

    @property
    def useful(self) -> bool:
        """Something usable is in the store: a tile written now with data, or recorded complete
        (with data) before. Tiles recorded ``empty``, now or by an earlier run, are not."""
        return any(
            o.status == TileStatus.DONE
            or (o.status == TileStatus.SKIPPED and o.record_status == TileStatus.COMPLETE)
            for o in self.outcomes
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.useful else 1

    @property
    def output_mb(self) -> float:
        return sum(o.output_mb for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": redact_url(self.out_url),
            "tiles": len(self.outcomes),
            "done": len(self.tiles_done),
            "skipped": len([o for o in self.outcomes if o.status == TileStatus.SKIPPED]),
            "empty": len(self.tiles_empty),
            "failed": len(self.tiles_failed),
            "useful": self.useful,
            "output_mb": round(self.output_mb, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }

    def format(self, max_lines: int = 20) -> str:
        """Human-readable run summary: counts, then why tiles/items were skipped or failed."""
        counts = {s.value: sum(1 for o in self.outcomes if o.status == s) for s in TileStatus.outcomes()}
        empty_before = [
            o for o in self.outcomes if o.status == TileStatus.SKIPPED and o.record_status == TileStatus.EMPTY
        ]
        lines = [
            f"cubes -> {redact_url(self.out_url)}: {len(self.outcomes)} tile(s): "
            f"{counts['done']} done, {counts['skipped'] - len(empty_before)} already complete, "
            + (f"{len(empty_before)} already recorded empty, " if empty_before else "")
            + f"{counts['empty']} empty, "
            f"{counts['failed']} failed ({self.output_mb:.1f} MB of pixels in {self.elapsed_s:.1f} s)"
        ]

        def block(title: str, rows: list[str]) -> None:
            if not rows:
                return
            lines.append(title)
            lines.extend(f"  {r}" for r in rows[:max_lines])
            if len(rows) > max_lines:
                lines.append(f"  ... and {len(rows) - max_lines} more")

        block("failed (retried on the next run):", [f"{t}: {r}" for t, r in self.tiles_failed.items()])
        block(
            "complete tiles rebuilt or not (items their record had not seen, or newer versions):",
            [
                f"{o.tile_id}: {o.reason}"
                for o in self.outcomes
                if o.reason.startswith(("rebuilt", "not rebuilt"))
            ],
        )
        block(
            "empty:",
            [f"{t}: {r}" for t, r in self.tiles_empty.items()]
            + [f"{o.tile_id}: {o.reason}" for o in empty_before],
        )
        reasons: dict[str, list[str]] = {}
        for s in self.items_skipped:
            reasons.setdefault(str(s["reason"]), []).append(f"{s['item']}:{s['asset']}")
        block(
            "items/assets left out:",
            [
                f"{len(v)}x {r} ({', '.join(sorted(set(v))[:3])}{' ...' if len(set(v)) > 3 else ''})"
                for r, v in reasons.items()
            ],
        )
        if not self.useful:
            lines.append("nothing useful was produced")
        return "\n".join(lines)
