"""CQL2-JSON evaluation in process: the cql2 package and the built-in fallback agree (SQL semantics)."""

from __future__ import annotations

import importlib.util

import pytest

from pipelines.search import FilterError, and_filters, compile_filter, query_to_cql2
from tests.pipelines.search.support import S2, make_item

ITEM = make_item(
    "S2A_T1",
    S2,
    (6.0, 45.0, 7.0, 46.0),
    "2023-05-01T10:00:00Z",
    cloud=5.0,
    epsg=32632,
    updated="2023-06-01T00:00:00Z",
)
ITEM_RANGE = make_item("range", S2, (6.0, 45.0, 7.0, 46.0), "2023-05-01T10:00:00Z")
ITEM_RANGE["properties"].update(
    datetime=None, start_datetime="2023-05-01T00:00:00Z", end_datetime="2023-05-31T23:59:59Z"
)

P = {"property": "eo:cloud_cover"}
CASES: list[tuple[dict, bool]] = [
    ({"op": "=", "args": [{"property": "id"}, "S2A_T1"]}, True),
    ({"op": "=", "args": [{"property": "collection"}, S2]}, True),
    ({"op": "<>", "args": [{"property": "collection"}, S2]}, False),
    ({"op": "<", "args": [P, 5]}, False),
    ({"op": "<=", "args": [P, 5]}, True),
    ({"op": ">", "args": [P, 4.9]}, True),
    ({"op": ">=", "args": [P, 6]}, False),
    ({"op": "=", "args": [P, 5]}, True),  # 5.0 == 5
    ({"op": "in", "args": [{"property": "platform"}, ["sentinel-2a", "sentinel-2b"]]}, True),
    ({"op": "in", "args": [{"property": "platform"}, ["landsat-8"]]}, False),
    ({"op": "between", "args": [P, 1, 10]}, True),
    ({"op": "between", "args": [P, 6, 10]}, False),
    ({"op": "like", "args": [{"property": "id"}, "S2A%"]}, True),
    ({"op": "like", "args": [{"property": "id"}, "S2_\\_T1"]}, True),
    ({"op": "like", "args": [{"property": "id"}, "S2B%"]}, False),
    ({"op": "isNull", "args": [{"property": "nope"}]}, True),
    ({"op": "isNull", "args": [P]}, False),
    (
        {
            "op": "and",
            "args": [{"op": "<=", "args": [P, 10]}, {"op": "like", "args": [{"property": "id"}, "S2%"]}],
        },
        True,
    ),
    (
        {"op": "or", "args": [{"op": ">", "args": [P, 10]}, {"op": "=", "args": [{"property": "id"}, "x"]}]},
        False,
    ),
    ({"op": "not", "args": [{"op": ">", "args": [P, 10]}]}, True),
    (
        {
            "op": "s_intersects",
            "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [6.5, 45.5]}],
        },
        True,
    ),
    (
        {
            "op": "s_intersects",
            "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [8.5, 45.5]}],
        },
        False,
    ),
    (
        {
            "op": "s_intersects",
            "args": [
                {"property": "geometry"},
                {
                    "type": "Polygon",
                    "coordinates": [[[6.9, 45.9], [8, 45.9], [8, 47], [6.9, 47], [6.9, 45.9]]],
                },
            ],
        },
        True,
    ),
    (
        {
            "op": "t_intersects",
            "args": [
                {"property": "datetime"},
                {"interval": ["2023-05-01T00:00:00Z", "2023-05-02T00:00:00Z"]},
            ],
        },
        True,
    ),
    (
        {
            "op": "t_intersects",
            "args": [{"property": "datetime"}, {"interval": ["2023-06-01T00:00:00Z", ".."]}],
        },
        False,
    ),
    (
        {
            "op": "anyinteracts",
            "args": [{"property": "datetime"}, {"interval": ["..", "2023-05-01T10:00:00Z"]}],
        },
        True,
    ),
    ({"op": "<", "args": [{"property": "datetime"}, {"timestamp": "2023-05-01T10:00:01Z"}]}, True),
    ({"op": ">", "args": [{"property": "updated"}, {"timestamp": "2023-06-01T00:00:00Z"}]}, False),
    # SQL NULL semantics: a comparison with a missing property is unknown -> does not select
    ({"op": "<=", "args": [{"property": "nope"}, 10]}, False),
    ({"op": "not", "args": [{"op": "<=", "args": [{"property": "nope"}, 10]}]}, False),
    (
        {
            "op": "or",
            "args": [
                {"op": "<=", "args": [{"property": "nope"}, 10]},
                {"op": "=", "args": [{"property": "id"}, "S2A_T1"]},
            ],
        },
        True,
    ),
]

ENGINES = ["builtin"] + (["cql2"] if importlib.util.find_spec("cql2") else [])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("expr", "expected"), CASES, ids=[f"{i}-{c[0]['op']}" for i, c in enumerate(CASES)])
def test_filter_cases(engine: str, expr: dict, expected: bool) -> None:
    assert compile_filter(expr, engine=engine)(ITEM) is expected


@pytest.mark.parametrize("engine", ["builtin"])
def test_interval_items_use_start_and_end(engine: str) -> None:
    f = {
        "op": "t_intersects",
        "args": [{"property": "datetime"}, {"interval": ["2023-05-20T00:00:00Z", "2023-06-20T00:00:00Z"]}],
    }
    assert compile_filter(f, engine=engine)(ITEM_RANGE) is True


def test_auto_prefers_the_cql2_package_when_installed() -> None:
    if importlib.util.find_spec("cql2") is None:
        pytest.skip("cql2 not installed")
    pred = compile_filter({"op": "<=", "args": [P, 10]})
    assert pred.__qualname__.startswith("_compile_cql2")


@pytest.mark.parametrize("engine", ENGINES)
def test_invalid_filters_raise_filter_error(engine: str) -> None:
    with pytest.raises((FilterError, ValueError)):
        compile_filter({"op": "frobnicate", "args": [1]}, engine=engine)(ITEM)


def test_query_extension_dict_form_maps_to_cql2() -> None:
    q = {
        "eo:cloud_cover": {"lte": 10, "gt": 1},
        "platform": {"startsWith": "sentinel"},
        "id": {"in": ["S2A_T1"]},
    }
    expr = query_to_cql2(q)
    assert expr["op"] == "and" and len(expr["args"]) == 4
    for engine in ENGINES:
        assert compile_filter(expr, engine=engine)(ITEM) is True
    assert compile_filter(query_to_cql2({"eo:cloud_cover": {"neq": 5}}), engine="builtin")(ITEM) is False
    assert query_to_cql2({"platform": {"contains": "50%"}})["args"][1] == "%50\\%%"
    with pytest.raises(FilterError, match="unknown query operator"):
        query_to_cql2({"a": {"near": 1}})
    with pytest.raises(FilterError, match="dict of operators"):
        query_to_cql2({"eo:cloud_cover": 10})  # the list/bare form is not accepted


def test_and_filters() -> None:
    a = {"op": "=", "args": [1, 1]}
    assert and_filters(None, None) is None
    assert and_filters(a, None) == a
    assert and_filters(a, a) == {"op": "and", "args": [a, a]}
