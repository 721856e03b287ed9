"""One tile-status vocabulary for every layer, and runs that reach Dask as Dask users expect
(``--dask-address``, else ``$DASK_SCHEDULER_ADDRESS``; the dashboard link is logged)."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import runs
from pipelines.runs import DASK_ADDRESS_ENV, TileStatus, dask_address
from tests.conftest import REPO_ROOT

# Every status word any layer used before the vocabulary was one (outcomes, records, load states).
STATUS_WORDS = {"done", "empty", "skipped", "failed", "complete", "nodata", "ok", "missing"}


def test_the_vocabulary() -> None:
    assert [str(s) for s in TileStatus.outcomes()] == ["done", "empty", "skipped", "failed"]
    assert [str(s) for s in TileStatus.recorded()] == ["complete", "empty", "nodata"]
    # str members: records written before the enum existed compare equal, JSON holds plain words
    assert TileStatus("complete") is TileStatus.COMPLETE and TileStatus.EMPTY == "empty"
    assert json.dumps({"status": TileStatus.FAILED}) == '{"status": "failed"}'
    assert {str(s) for s in TileStatus} <= STATUS_WORDS


def test_run_results_are_typed_with_the_vocabulary() -> None:
    from typing import get_type_hints

    from pipelines.cubes import TileOutcome
    from pipelines.embed import TileResult
    from pipelines.embed.sources import PaddedTile

    for cls in (TileOutcome, TileResult, PaddedTile):
        assert get_type_hints(cls)["status"] is TileStatus, cls


def _status_literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Status words written as string literals where a status is compared, assigned or built."""

    def words(node: ast.AST) -> list[str]:
        return [
            n.value
            for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in STATUS_WORDS
        ]

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and "status" in ast.unparse(node):
            hits = words(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and "status" in ast.unparse(node).split("=")[0]:
            hits = words(node.value) if node.value is not None else []
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in (
            "TileOutcome",
            "TileResult",
        ):
            hits = [w for a in node.args for w in words(a)]
        elif isinstance(node, ast.Dict):
            hits = [
                w
                for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant) and k.value == "status"
                for w in words(v)
            ]
        else:
            continue
        for word in hits:
            yield node.lineno, word


def test_no_layer_spells_a_status_as_a_bare_string() -> None:
    found = []
    for package in ("pipelines", "flows"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path.name == "runs.py" and path.parent.name == "pipelines":
                continue
            for line, word in _status_literals(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(f"{path.relative_to(REPO_ROOT)}:{line}: {word!r}")
    assert not found, "use pipelines.runs.TileStatus instead of:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------
# Dask


def test_dask_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask.config

    monkeypatch.delenv(DASK_ADDRESS_ENV, raising=False)
    with dask.config.set({"scheduler-address": None}):
        assert dask_address(None) is None and dask_address("  ") is None
        monkeypatch.setenv(DASK_ADDRESS_ENV, "tcp://from-env:8786")
        assert dask_address(None) == "tcp://from-env:8786"
        assert dask_address("tcp://given:8786") == "tcp://given:8786"  # the option wins
        monkeypatch.delenv(DASK_ADDRESS_ENV)
    with dask.config.set({"scheduler-address": "tcp://from-config:8786"}):
        assert dask_address(None) == "tcp://from-config:8786"


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_embed_runs_on_the_scheduler_of_the_environment(
    scheduler: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.embed import EmbedRequest, Fanout

    monkeypatch.setenv(DASK_ADDRESS_ENV, scheduler)
    # workers=0 would run in-process; the environment's scheduler takes precedence, as --dask-address does
    request = EmbedRequest(checkpoint="c", out="o", datetime="2023", aoi=(0, 0, 1, 1), cubes="x", workers=0)
    caplog.set_level(logging.INFO, logger="pipelines.runs")
    with Fanout(request) as fan:
        assert fan.client is not None and fan.cluster is None
        assert fan.client.scheduler.address == scheduler
    assert any(f"Dask scheduler {scheduler}" in n for n in fan.notes)
    assert "Dask dashboard at http" in caplog.text


def test_cubes_run_on_the_scheduler_of_the_environment(
    scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.cubes import CubeSpec, write_cubes
    from pipelines.tiling import TileGrid

    monkeypatch.setenv(DASK_ADDRESS_ENV, scheduler)
    caplog.set_level(logging.INFO, logger="pipelines.runs")
    spec = CubeSpec(grid=TileGrid(), collections=("sentinel-2-l2a",))
    tile = spec.grid.tile_at(6.0, 45.0)
    summary = write_cubes([], [tile], spec, str(tmp_path / "cubes"), progress=False)
    assert [(o.tile_id, o.status, o.reason) for o in summary.outcomes] == [
        (tile.tile_id, TileStatus.EMPTY, "no items touch this tile")
    ]
    assert f"Dask scheduler {scheduler}: Dask dashboard at http" in caplog.text


@pytest.mark.parametrize(
    ("address", "expect"),
    [
        ("notanaddress", "--dask-address notanaddress: not a Dask scheduler address; give tcp://HOST:PORT"),
        ("tcp://h:x", "not a Dask scheduler address"),
        ("tcp://:8786", "not a Dask scheduler address"),
        ("foo://h:1", "unknown Dask address scheme foo://; use tcp://"),
    ],
)
def test_a_malformed_dask_address_is_bad_input(address: str, expect: str) -> None:
    from pipelines.errors import InputError

    with pytest.raises(InputError, match=re.escape(expect)):
        runs.dask_address(address)


def test_dask_addresses_that_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for address in ("tcp://10.0.0.1:8786", "127.0.0.1:8786", "tls://sched:8786", "ucx://10.0.0.1:13337"):
        assert runs.dask_address(address) == address
    monkeypatch.setenv(runs.DASK_ADDRESS_ENV, "sched")
    with pytest.raises(ValueError, match=r"^\$DASK_SCHEDULER_ADDRESS sched: not a Dask scheduler address"):
        runs.dask_address(None)


def test_an_unreachable_scheduler_is_a_failed_run_of_one_line() -> None:
    import dask.config

    from pipelines.errors import EXIT_FAILED, RunFailedError

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(
            RunFailedError, match=r"^cannot reach the Dask scheduler at tcp://127.0.0.1:1: "
        ) as info,
        runs.dask_client("tcp://127.0.0.1:1"),
    ):
        pass
    assert info.value.exit_code == EXIT_FAILED and "\n" not in str(info.value)
