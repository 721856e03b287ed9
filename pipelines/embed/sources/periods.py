"""Periods of an embedding run: ``--datetime`` as one or more closed intervals, one time slice each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.embed.chips import EmbedConfigError

_MIN = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
_MAX = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------------------
# Periods


@dataclass(frozen=True)
class Period:
    """One time slice of the product: a closed or half-open datetime range (UTC)."""

    text: str
    start: dt.datetime
    end: dt.datetime

    @property
    def label(self) -> str:
        """The slice's time in the store: the start date (the end date for ``../end``)."""
        return (self.start if self.start != _MIN else self.end).date().isoformat()

    def contains(self, t: np.datetime64) -> bool:
        value = dt.datetime.fromisoformat(str(np.datetime_as_string(t, unit="us"))).replace(tzinfo=dt.UTC)
        return self.start <= value <= self.end


def _parse_instant(text: str, end: bool) -> dt.datetime:
    text = text.strip()
    if text in ("", ".."):
        return _MAX if end else _MIN
    try:
        if len(text) == 10:  # a date: the whole day
            d = dt.date.fromisoformat(text)
            t = dt.datetime.combine(d, dt.time.max if end else dt.time.min)
        else:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EmbedConfigError(f"datetime {text!r} is not an RFC 3339 date or date-time") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def parse_periods(text: str) -> list[Period]:
    """``"2023-01-01/2023-12-31"`` -> one period; comma-separated ranges -> several time slices."""
    out = []
    for part in [p.strip() for p in str(text or "").split(",") if p.strip()]:
        if "/" in part:
            a, b = part.split("/", 1)
        else:
            a, b = part, part
        start, end = _parse_instant(a, False), _parse_instant(b, True)
        if start == _MIN and end == _MAX:
            raise EmbedConfigError(f"datetime {part!r} is open at both ends: give at least a start or an end")
        if start > end:
            raise EmbedConfigError(f"datetime {part!r}: start is after end")
        out.append(Period(part, start, end))
    if not out:
        raise EmbedConfigError("datetime is required, e.g. 2023-06-01/2023-08-31 (one composite per range)")
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise EmbedConfigError(f"periods {[p.text for p in out]} share a start date; give distinct ranges")
    return out


def search_interval(periods: Sequence[Period]) -> str:
    start = min(p.start for p in periods)
    end = max(p.end for p in periods)
    a = ".." if start == _MIN else start.isoformat().replace("+00:00", "Z")
    b = ".." if end == _MAX else end.isoformat().replace("+00:00", "Z")
    return f"{a}/{b}"
