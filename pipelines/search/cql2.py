"""CQL2-JSON filters (and the STAC ``query`` extension) evaluated on item dicts in process.

:func:`compile_filter` returns a predicate ``item -> bool``. It uses the ``cql2`` package (Rust,
the same library stac-fastapi parses filters with) when it is importable, and otherwise a small
evaluator here that covers the common subset: ``and or not = <> < <= > >= in between like isNull
s_intersects t_intersects anyinteracts`` with GeoJSON / ``{"bbox": ...}`` / ``{"timestamp": ...}``
/ ``{"date": ...}`` / ``{"interval": [...]}`` literals.

Both follow SQL semantics, as a STAC API backed by a database does: a comparison with a missing
or null property is *unknown*, and an unknown filter does not select the item.

Properties resolve like the STAC API filter extension: ``id``, ``collection``, ``geometry`` and
``bbox`` are top-level item fields; anything else is ``properties[name]`` (a ``properties.``
prefix is accepted).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.errors import InputError

_NULL = None  # SQL NULL / unknown

Predicate = Callable[[Mapping[str, Any]], bool]


class FilterError(InputError):
    """The filter is not valid CQL2-JSON (or uses an operator this evaluator does not know)."""


def compile_filter(expr: Mapping[str, Any], *, engine: str = "auto") -> Predicate:
    """A predicate for one CQL2-JSON expression; ``engine`` is ``auto``, ``cql2`` or ``builtin``."""
    if engine not in ("auto", "cql2", "builtin"):
        raise ValueError(f"engine must be auto, cql2 or builtin, got {engine!r}")
    if engine in ("auto", "cql2"):
        try:
            import cql2
        except ImportError:
            if engine == "cql2":
                raise
        else:
            _check(expr, _CQL2_OPS)  # cql2 reports an unknown operator only as "cannot reduce"
            return _compile_cql2(cql2, expr)
    _check(expr, _BUILTIN_OPS)
    return lambda item: _eval(expr, item) is True


def _compile_cql2(cql2: Any, expr: Mapping[str, Any]) -> Predicate:
    try:
        compiled = cql2.Expr(dict(expr))
    except Exception as exc:  # cql2.ParseError / ValidationError / ValueError
        raise FilterError(f"invalid CQL2-JSON filter: {exc}") from exc

    def predicate(item: Mapping[str, Any]) -> bool:
        try:
            return bool(compiled.matches(dict(item)))
        except Exception as exc:
            # cql2 cannot reduce a comparison with a missing/null property: SQL "unknown" -> no match
            if "reduce" in str(exc).lower():
                return False
            raise FilterError(f"cannot evaluate CQL2 filter on item {item.get('id')!r}: {exc}") from exc

    return predicate


def query_to_cql2(query: Mapping[str, Any]) -> dict[str, Any]:
    """The STAC ``query`` extension (dict form ``{prop: {op: value}}``) as one CQL2-JSON ``and``."""
    ops = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
    args: list[dict[str, Any]] = []
    if not isinstance(query, Mapping):
        raise FilterError(f"query must be a dict {{property: {{op: value}}}}, got {type(query).__name__}")
    for prop, conditions in query.items():
        if not isinstance(conditions, Mapping):
            raise FilterError(
                f"query[{prop!r}] must be a dict of operators such as {{'lte': 10}}, got {conditions!r}"
            )
        p = {"property": prop}
        for op, value in conditions.items():
            if op in ops:
                args.append({"op": ops[op], "args": [p, value]})
            elif op == "in":
                args.append({"op": "in", "args": [p, list(value)]})
            elif op == "startsWith":
                args.append({"op": "like", "args": [p, f"{_like_escape(str(value))}%"]})
            elif op == "endsWith":
                args.append({"op": "like", "args": [p, f"%{_like_escape(str(value))}"]})
            elif op == "contains":
                args.append({"op": "like", "args": [p, f"%{_like_escape(str(value))}%"]})
            else:
                raise FilterError(f"unknown query operator {op!r} for {prop!r}")
    if not args:
        return {"op": "=", "args": [1, 1]}
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def and_filters(*exprs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """AND of the non-None expressions (None when there are none)."""
    parts = [dict(e) for e in exprs if e]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# ------------------------------------------------------------------------------------------
# The built-in evaluator (used when the cql2 package is not installed)

_LOGICAL = {"and", "or", "not"}
_COMPARE = {"=", "<>", "<", "<=", ">", ">="}
_OTHER = {"in", "between", "like", "isnull", "s_intersects", "t_intersects", "anyinteracts"}
_BUILTIN_OPS = frozenset(_LOGICAL | _COMPARE | _OTHER)
_CQL2_OPS = _BUILTIN_OPS | {
    "casei", "accenti", "+", "-", "*", "/", "%", "^", "div",
    "s_contains", "s_crosses", "s_disjoint", "s_equals", "s_overlaps", "s_touches", "s_within",
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals", "t_finishedby",
    "t_finishes", "t_meets", "t_metby", "t_overlappedby", "t_overlaps", "t_startedby", "t_starts",
    "a_containedby", "a_contains", "a_equals", "a_overlaps",
}  # fmt: skip


def _check(expr: Any, known: frozenset[str] = _BUILTIN_OPS) -> None:
    if isinstance(expr, Mapping) and "op" in expr:
        op = str(expr["op"]).lower()
        if op not in known:
            raise FilterError(f"unknown or unsupported CQL2 operator {expr['op']!r}")
        args = expr.get("args")
        if not isinstance(args, list):
            raise FilterError(f"CQL2 operator {expr['op']!r} needs an 'args' list")
        for a in args:
            _check(a, known)
    elif isinstance(expr, list):
        for a in expr:
            _check(a, known)


def _prop(item: Mapping[str, Any], name: str) -> Any:
    if name in ("id", "collection", "geometry", "bbox"):
        return item.get(name)
    props = item.get("properties") or {}
    if name.startswith("properties."):
        name = name[len("properties.") :]
    return props.get(name)


def _value(arg: Any, item: Mapping[str, Any]) -> Any:
    if isinstance(arg, Mapping):
        if "property" in arg:
            return _prop(item, str(arg["property"]))
        if "timestamp" in arg:
            return _parse_time(arg["timestamp"])
        if "date" in arg:
            return _parse_time(arg["date"])
        if "interval" in arg:
            return tuple(_value(x, item) for x in arg["interval"])
        if "op" in arg:
            return _eval(arg, item)
    return arg


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or value == "..":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    text = str(value).strip()
    if not text or text == "..":
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _coerce_pair(a: Any, b: Any) -> tuple[Any, Any]:
    """Compare a string property with a time literal as times."""
    if isinstance(a, dt.datetime) and isinstance(b, str):
        return a, _parse_time(b)
    if isinstance(b, dt.datetime) and isinstance(a, str):
        return _parse_time(a), b
    return a, b


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return _NULL
    a, b = _coerce_pair(a, b)
    try:
        if op == "=":
            return bool(a == b)
        if op == "<>":
            return bool(a != b)
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)
    except TypeError:
        return _NULL


def _like(value: Any, pattern: Any) -> bool | None:
    if value is None or pattern is None:
        return _NULL
    out = []
    text = str(pattern)
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(re.escape(text[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), str(value), flags=re.DOTALL) is not None


def _geometry(value: Any) -> Any:
    from shapely.geometry import box, shape

    if value is None:
        return None
    if isinstance(value, Mapping) and "bbox" in value and "type" not in value:
        value = value["bbox"]
    if (
        isinstance(value, list | tuple)
        and len(value) in (4, 6)
        and all(isinstance(v, int | float) for v in value)
    ):
        w, s, e, n = (
            (value[0], value[1], value[2], value[3])
            if len(value) == 4
            else (value[0], value[1], value[3], value[4])
        )
        return box(w, s, e, n)
    return shape(value)


def _time_range(value: Any) -> tuple[dt.datetime | None, dt.datetime | None] | None:
    """(start, end) with None for an open end; None when unknown."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return (
            _parse_time(value[0]) if not isinstance(value[0], dt.datetime) else value[0],
            _parse_time(value[1]) if not isinstance(value[1], dt.datetime) else value[1],
        )
    t = _parse_time(value) if not isinstance(value, dt.datetime) else value
    return (t, t)


def _item_time(item: Mapping[str, Any], arg: Any) -> Any:
    if isinstance(arg, Mapping) and arg.get("property") == "datetime":
        props = item.get("properties") or {}
        if props.get("datetime") is None and (props.get("start_datetime") or props.get("end_datetime")):
            return (props.get("start_datetime") or "..", props.get("end_datetime") or "..")
    return _value(arg, item)


def _t_intersects(a: Any, b: Any) -> bool | None:
    ra, rb = _time_range(a), _time_range(b)
    if ra is None or rb is None:
        return _NULL
    lo = max((t for t in (ra[0], rb[0]) if t is not None), default=None)
    hi = min((t for t in (ra[1], rb[1]) if t is not None), default=None)
    return lo is None or hi is None or lo <= hi


def _eval(expr: Any, item: Mapping[str, Any]) -> Any:
    if not isinstance(expr, Mapping) or "op" not in expr:
        return _value(expr, item)
    op = str(expr["op"]).lower()
    args = list(expr.get("args") or [])
    if op == "and":
        results = [_eval(a, item) for a in args]
        if any(r is False for r in results):
            return False
        return True if all(r is True for r in results) else _NULL
    if op == "or":
        results = [_eval(a, item) for a in args]
        if any(r is True for r in results):
            return True
        return False if all(r is False for r in results) else _NULL
    if op == "not":
        r = _eval(args[0], item)
        return _NULL if r is None else not r
    if op in _COMPARE:
        return _compare(op, _value(args[0], item), _value(args[1], item))
    if op == "isnull":
        return _value(args[0], item) is None
    if op == "in":
        v = _value(args[0], item)
        if v is None:
            return _NULL
        return any(_compare("=", v, _value(x, item)) for x in (args[1] or []))
    if op == "between":
        v, lo, hi = (_value(a, item) for a in args[:3])
        left, right = _compare(">=", v, lo), _compare("<=", v, hi)
        if left is None or right is None:
            return _NULL
        return left and right
    if op == "like":
        return _like(_value(args[0], item), _value(args[1], item))
    if op == "s_intersects":
        ga, gb = (
            _geometry(_value(a, item) if isinstance(a, Mapping) and "property" in a else a) for a in args[:2]
        )
        if ga is None or gb is None:
            return _NULL
        return bool(ga.intersects(gb))
    if op in ("t_intersects", "anyinteracts"):
        return _t_intersects(_item_time(item, args[0]), _item_time(item, args[1]))
    raise FilterError(f"CQL2 operator {expr['op']!r} is not supported by the built-in evaluator")


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (for cloud-cover style properties)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None
