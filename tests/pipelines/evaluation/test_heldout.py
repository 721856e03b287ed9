"""The held-out evaluation data: a crop of ``t29unu:north`` never reaches the south half the shipped
checkpoint was pretrained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.evaluation import DatasetSpec, EvalDataError, load_dataset
from pipelines.evaluation.heldout import T29UNU_HALVES, t29unu_window
from pipelines.evaluation.product import load_scene


def test_halves_meet_at_the_training_line() -> None:
    # row 926 of the 60 m grid (top y 5 900 040 m) is y = 5 844 480 m, the top of tile row iy = 760
    north, south = T29UNU_HALVES["north"], T29UNU_HALVES["south"]
    assert north[0] + north[2] == south[0] == 926
    assert 5_900_040 - 60 * 926 == 761 * 7680
    assert t29unu_window("t29unu:north") == north
    assert t29unu_window("T29UNU:South") == south
    assert t29unu_window("t29unu") is None


def test_a_window_must_stay_inside_its_half() -> None:
    assert t29unu_window("t29unu:north", (0, 0, 300, 600)) == (0, 0, 300, 600)
    assert t29unu_window("t29unu:north", (826, 1730, 100, 100)) == (826, 1730, 100, 100)
    assert t29unu_window("t29unu:south", (926, 0, 10, 10)) == (926, 0, 10, 10)
    assert t29unu_window("t29unu", (900, 0, 60, 60)) == (900, 0, 60, 60)  # the whole scene: any crop
    for name, win in [
        ("t29unu:north", (900, 0, 60, 60)),  # rows 926-959 are training pixels
        ("t29unu:north", (0, 1800, 10, 40)),
        ("t29unu:south", (900, 0, 60, 60)),
        ("t29unu:north", (0, 0, 0, 10)),
        ("t29unu", (-1, 0, 10, 10)),
    ]:
        with pytest.raises(EvalDataError, match="is not inside"):
            t29unu_window(name, win)


def test_probes_and_product_metrics_refuse_a_north_window_reaching_south(tmp_path: Path) -> None:
    # checked before any file is read (the real data is not needed to refuse it)
    spec = DatasetSpec("t29unu:north", window=(900, 0, 60, 60), real_data=str(tmp_path / "none"))
    with pytest.raises(EvalDataError, match="is not inside t29unu:north"):
        load_dataset(spec)
    with pytest.raises(EvalDataError, match="is not inside t29unu:north"):
        load_scene(spec)
