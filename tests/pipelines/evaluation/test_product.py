"""Product metrics: chip-position variance share, shift consistency, seam contrast and retrieval
precision of what `aom embed-raster` writes, on arrays with known answers and end to end on a small
synthetic scene."""

from __future__ import annotations

from typing import Any

import numpy as np

from aom_model.config import SPECTRAL_QUERIES
from pipelines.evaluation.datasets import synthetic_scene
from pipelines.evaluation.product import (
    ProductMetrics,
    centre,
    chip_position_chance,
    chip_position_share,
    product_embeddings,
    retrieval_precision,
    run_product_metrics,
    seam_contrast,
    shift_consistency,
    token_labels,
    unrelated_cosine,
)
from pipelines.evaluation.report import _product_lines


def _ground(h: int, w: int, d: int = 8, seed: int = 0) -> np.ndarray:
    """Embeddings that depend on the ground only: a smooth random field [h, w, d]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.normal(size=(d, 4))
    return np.stack(
        [np.sin(yy / 5.0 * f[k, 0] + f[k, 1]) + np.cos(xx / 7.0 * f[k, 2] + f[k, 3]) for k in range(d)], -1
    )


def test_chip_position_share_is_one_for_chip_codes_and_small_for_ground() -> None:
    core, h, w = 4, 24, 32
    rows, cols = np.mgrid[0:h, 0:w]
    codes = np.random.default_rng(1).normal(size=(core * core, 8))
    chip_only = codes[(rows % core) * core + cols % core]  # [h, w, 8]: where in the chip, nothing else
    assert abs(chip_position_share(chip_only, core) - 1.0) < 1e-9
    ground = np.random.default_rng(2).normal(size=(h, w, 8))
    assert chip_position_share(ground, core) < 0.15  # chance level ~ (16 - 1) / (768 - 1) = 0.02
    mixed = ground + 3 * chip_only
    assert 0.8 < chip_position_share(mixed, core) < 1.0
    ground[0, 0] = np.nan  # invalid tokens are left out
    assert np.isfinite(chip_position_share(ground, core))


def test_chip_position_share_is_set_beside_its_chance_level() -> None:
    """Within one chip core every place holds one token, so the share is 1 whatever the tokens are
    (noise without any position): the chance level says so, and the goal cannot count as met."""
    noise = np.random.default_rng(3).normal(size=(24, 24, 8))
    assert abs(chip_position_share(noise, 24) - 1.0) < 1e-9  # an artefact of the grid, not of the model
    assert chip_position_chance(noise, 24) == 1.0 and chip_position_chance(noise, 24, offset=12) == 1.0
    big = np.random.default_rng(4).normal(size=(24, 32, 8))
    assert abs(chip_position_chance(big, 4) - 15 / 767) < 1e-12
    big[0, :] = np.nan  # only valid tokens count
    assert abs(chip_position_chance(big, 4) - 15 / (23 * 32 - 1)) < 1e-12
    m = ProductMetrics("x", "position", 8, 160.0, 24, (24, 24), 576, 0.1, chip_position_chance=1.0)
    assert m.goals()["chip_position_share"] is False  # not shown on a grid that cannot show it
    m.chip_position_chance = 0.02
    assert m.goals()["chip_position_share"] is True


def test_the_smoke_run_grid_reports_its_chance_level() -> None:
    """`aom eval --dataset synthetic` embeds a 24 x 24 token grid in 24-token cores: chip-position
    share 1.000 there is the chance level, and the report and the row say so."""
    rows = run_product_metrics(synthetic_scene(), "random:tiny", token_m=160.0, shifts=())
    m = rows[0]
    assert tuple(m["grid_hw"]) == (24, 24) and m["chip_position_chance"] == 1.0
    assert m["goals"]["chip_position_share"] is False
    text = "\n".join(_product_lines(rows))
    assert "| chip-position share | chance |" in text and "| 1.000 | 1.000 |" in text
    _assert_tables_are_rectangular(text, tables=2)


def test_shift_consistency_and_unrelated_tokens() -> None:
    ref = _ground(30, 30)
    for s in (1, 2, 3):
        assert abs(shift_consistency(ref, ref[s:, s:], s) - 1.0) < 1e-12
    noise = np.random.default_rng(3).normal(size=(27, 27, 8))
    assert shift_consistency(ref, ref[3:, 3:] + 10 * noise, 3) < 0.5
    assert abs(unrelated_cosine(np.random.default_rng(4).normal(size=(30, 30, 64)))) < 0.05


def test_centred_cosines_see_past_a_shared_component() -> None:
    """Tokens that share one large vector: raw cosines are near 1 for any pair (a noisy crop looks
    consistent, unrelated tokens look alike); centred on the mean token the same crop is 1 exactly,
    the noisy one is not, and unrelated tokens are near 0."""
    field = _ground(30, 30, d=16) + np.random.default_rng(6).normal(size=(30, 30, 16))
    shared = field + 200.0 * np.random.default_rng(7).normal(size=16)
    noisy = shared[3:, 3:] + np.random.default_rng(8).normal(size=(27, 27, 16))
    assert unrelated_cosine(shared) > 0.99 and shift_consistency(shared, noisy, 3) > 0.99
    mean = np.nanmean(shared.reshape(-1, 16), axis=0)
    c = centre(shared)
    assert np.allclose(c, shared - mean, atol=1e-3) and abs(unrelated_cosine(c)) < 0.05
    assert abs(shift_consistency(c, centre(shared[3:, 3:], mean), 3) - 1.0) < 1e-6
    assert shift_consistency(c, centre(noisy, mean), 3) < 0.9
    shared[0, 0] = np.nan  # invalid tokens stay invalid and do not enter the mean
    c = centre(shared)
    assert np.isnan(c[0, 0]).all() and np.isfinite(c[1:]).all()


def test_seam_contrast_sees_chip_seams_only() -> None:
    core = 5
    smooth = _ground(20, 20) + 3.0  # offset: adjacent tokens near-parallel
    assert abs(seam_contrast(smooth, core)["contrast"]) < 0.01
    rows, cols = np.mgrid[0:20, 0:20]
    per_chip = np.random.default_rng(5).normal(size=(16, 8))[
        (rows // core) * 4 + cols // core
    ]  # one vector per chip
    s = seam_contrast(per_chip, core)
    assert s["inside"] > 0.999 and s["across"] < 0.9 and s["contrast"] > 0.1


def test_token_labels_need_the_purity_share_of_a_tokens_pixels() -> None:
    labels = np.full((6, 6), 1)
    labels[:3, :3] = 0  # token (0, 0): all class 0
    labels[0, 3] = 2  # token (0, 1): 8 of 9 pixels class 1
    labels[3:5, 3:] = -1  # token (1, 1): 3 of 9 pixels class 1, the rest unlabelled
    out = token_labels(labels, (6, 6), 3, (2, 2), purity=0.8)
    np.testing.assert_array_equal(out, [[0, 1], [1, -1]])


def test_token_labels_of_a_coarser_label_raster_and_partial_tokens() -> None:
    """Labels at half the raster's resolution (nearest label per pixel); a 7 x 7 px raster in 3 px
    tokens has a partial last row and column, judged on their own pixels."""
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])  # 4 x 4 over 7 x 7 px
    out = token_labels(labels, (7, 7), 3, (3, 3), purity=0.99)
    # pixel rows 0-3 / cols 0-3 take label row/col 0-1; token (0, 1) mixes classes 0 and 1
    np.testing.assert_array_equal(out, [[0, -1, 1], [-1, -1, -1], [2, 2, 2]])


def test_retrieval_precision_is_one_for_separated_classes_and_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40), dtype=np.int64)
    lab[:, 20:] = 1
    centres = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    emb = centres[lab] + 0.05 * rng.normal(size=(40, 40, 4))
    emb[0, 0] = np.nan  # a nodata token is never a query nor an answer
    assert retrieval_precision(emb, lab, k=10, exclude_tokens=3, queries=30) == {0: 1.0, 1: 1.0}
    noise = retrieval_precision(rng.normal(size=(40, 40, 4)), lab, k=10, exclude_tokens=3, queries=30)
    assert all(0.3 < v < 0.7 for v in noise.values())
    few = lab.copy()
    few[few == 1] = -1
    few[0, 39] = 1  # one token of class 1: too few to query
    assert set(retrieval_precision(emb, few, k=10, exclude_tokens=3, queries=30)) == {0}


def test_retrieval_leaves_out_the_querys_neighbourhood() -> None:
    """Two compact classes whose vectors nearly agree: a query's own blob answers it when only the
    query itself is left out (precision 1), the other class when its neighbourhood is (precision 0)."""
    lab = np.full((30, 30), -1, dtype=np.int64)
    lab[:3, :3] = 0
    lab[20:23, 20:23] = 1
    emb = np.zeros((30, 30, 2))
    emb[lab == 0] = [1.0, 0.0]
    emb[lab == 1] = [1.0, 0.1]
    assert retrieval_precision(emb, lab, k=2, exclude_tokens=0, queries=9) == {0: 1.0, 1: 1.0}
    assert retrieval_precision(emb, lab, k=2, exclude_tokens=2, queries=9) == {0: 0.0, 1: 0.0}


def test_a_shared_component_leaves_the_raw_ranking_to_the_rest() -> None:
    """One constant vector added to every token compresses raw cosines towards 1, but the nearest
    neighbours still follow the class directions (``benchmarks/similarity_metrics.py`` measures
    the same on T29UNU)."""
    rng = np.random.default_rng(1)
    lab = np.repeat(np.arange(2), 800).reshape(40, 40)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    emb = centres[lab] + 0.2 * rng.normal(size=(40, 40, 3))
    shared = emb + np.array([0.0, 0.0, 20.0])
    assert retrieval_precision(shared, lab, 10, 3, 30) == retrieval_precision(emb, lab, 10, 3, 30)


def _assert_tables_are_rectangular(text: str, tables: int) -> None:
    """Every Markdown table in ``text``: its separator and each row have as many cells as its header."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            if not blocks or not blocks[-1]:
                blocks.append([])
            blocks[-1].append(line)
        elif blocks and blocks[-1]:
            blocks.append([])
    found = [b for b in blocks if b]
    assert len(found) == tables
    for b in found:
        widths = [line.count("|") - 1 for line in b]
        assert len(set(widths)) == 1, b[:3]


def test_product_metrics_end_to_end_on_a_small_synthetic_scene() -> None:
    """A 20 m synthetic scene (96 x 96 px) through embed-raster at 160 m tokens (8 px): a 12 x 12 grid
    in 4-token chip cores; the metrics are finite and in range, random-init beside the checkpoint."""
    scene = synthetic_scene(size_px=96, n_classes=3, seed=1)
    rows = run_product_metrics(
        scene,
        "random:tiny",
        token_m=160.0,
        shifts=(1, 2),
        core_tokens=4,
        margin_tokens=1,
        retrieval={"k": 3, "exclude_tokens": 1, "purity": 0.6},
    )
    assert [r["kind"] for r in rows] == ["random-init"]
    m = rows[0]
    assert m["token_m"] == 160.0 and tuple(m["grid_hw"]) == (12, 12) and m["valid_tokens"] > 100
    assert 0.0 <= m["chip_position_share"] <= 1.0
    assert set(m["shift_consistency"]) == {"1", "2"}
    assert all(-1.0 <= v <= 1.0 for v in m["shift_consistency"].values())
    assert -1.0 <= m["unrelated_cosine"] <= 1.0 and np.isfinite(m["seams"]["contrast"])
    assert set(m["goals"]) == {"chip_position_share", "shift_consistency", "seam_contrast"}
    r = m["retrieval"]
    assert r["k"] == 3 and r["queries"] == 80 and r["labelled_tokens"] > 20
    assert set(r["per_class"]) <= set(scene.class_names) and len(r["per_class"]) >= 2
    assert 0.0 <= r["precision"] <= 1.0 and r["precision"] == np.mean(list(r["per_class"].values()))
    text = "\n".join(_product_lines(rows))
    assert "## Product metrics" in text and "| position | random-init | 160 |" in text
    w = r["whitened"]
    assert w["axes"] == 32 and 0.0 <= w["precision"] <= 1.0 and set(w["per_class"]) == set(r["per_class"])
    st = r["stored"]  # the store's default encoding of the position embedding: int8-sqrt codes
    assert st["quantisation"] == "int8-sqrt" and set(st["per_class"]) == set(r["per_class"])
    assert abs(st["precision"] - r["precision"]) <= 0.1 and 0.0 <= st["whitened"]["precision"] <= 1.0
    cells = (r["precision"], w["precision"], st["precision"], st["whitened"]["precision"])
    assert "| " + " | ".join(f"{v:.3f}" for v in cells) + " |" in text
    assert (
        "as stored: the same two searches on the values `aom embed` stores by default (position: int8-sqrt)"
        in text
    )
    assert "k = 3, up to 80 queries per label class" in text
    _assert_tables_are_rectangular(text, tables=2)
    assert "Chips: 4-token cores + 1-token margins, seams blended over 1 tokens each side" in text


def test_product_embeddings_follow_the_eval_features() -> None:
    assert product_embeddings(("pooled", "spectral")) == ("position", "spectral")
    assert product_embeddings(("spectral", "band-tokens", "pooled", "spectral")) == ("spectral", "position")
    assert product_embeddings(("band-tokens",)) == ()


def test_product_metrics_of_the_spectral_embedding() -> None:
    """Both product embeddings of one checkpoint on the synthetic scene: one row each, measured on
    the output embed-raster writes for that embedding (64 position values, 64 per spectral query)."""
    scene = synthetic_scene(size_px=96, n_classes=3, seed=1)
    rows = run_product_metrics(
        scene,
        "random:tiny",
        token_m=160.0,
        shifts=(1,),
        core_tokens=4,
        margin_tokens=1,
        embeddings=("position", "spectral"),
        retrieval={"k": 3, "exclude_tokens": 1, "purity": 0.6},
    )
    assert [(r["embedding"], r["kind"]) for r in rows] == [
        ("position", "random-init"),
        ("spectral", "random-init"),
    ]
    position, spectral = rows
    assert position["dim"] == 64 and spectral["dim"] == 64 * len(SPECTRAL_QUERIES)
    assert position["grid_hw"] == spectral["grid_hw"] and position["valid_tokens"] == spectral["valid_tokens"]
    assert spectral["chip_position_share"] != position["chip_position_share"]
    assert 0.0 <= spectral["chip_position_share"] <= 1.0 and -1.0 <= spectral["shift_consistency"]["1"] <= 1.0
    text = "\n".join(_product_lines(rows))
    assert "| position | random-init | 160 |" in text and "| spectral | random-init | 160 |" in text
    for r in rows:  # the centred cosines of the same outputs
        c = r["centred"]
        assert set(c["shift_consistency"]) == {"1"} and -1.0 <= c["shift_consistency"]["1"] <= 1.0
        assert abs(c["unrelated_cosine"]) < 0.1
        assert set(c["seams"]) == {"inside", "across", "contrast"}
    assert "The same cosines on tokens centred" in text and "| spectral | random-init | " in text
    # "as stored": the spectral embedding's store keeps float16 raw values, which rank as float32 do
    stored = spectral["retrieval"]["stored"]
    assert stored["quantisation"] == "float16"
    assert stored["precision"] is not None
    assert abs(stored["precision"] - spectral["retrieval"]["precision"]) <= 0.02
    assert "(position: int8-sqrt, spectral: float16)" in text


def test_seam_blending_lowers_the_seam_contrast_end_to_end() -> None:
    """The same synthetic scene (192 x 192 px of 20 m, a 24 x 24 token grid) through embed-raster with
    random weights, 6-token cores and 2-token margins: blending 2 tokens each side of a seam gives a
    lower seam contrast than cores only (measured 0.009 vs 0.014), at no cost in shift consistency,
    and each output records its layout (the blended one runs more chips: 24 vs 16)."""
    scene = synthetic_scene(size_px=192, n_classes=4, seed=1)

    def run(blend_tokens: int) -> list[dict[str, Any]]:
        return run_product_metrics(
            scene,
            "random:tiny",
            token_m=160.0,
            shifts=(1,),
            core_tokens=6,
            margin_tokens=2,
            blend_tokens=blend_tokens,
        )

    (core_only,) = run(0)
    (blended,) = run(2)
    assert core_only["chip"]["blend_tokens"] == 0 and core_only["chip"]["offset_tokens"] == 0
    assert blended["chip"]["blend_tokens"] == 2 and blended["chip"]["offset_tokens"] == 3
    assert blended["chips_run"] > core_only["chips_run"]
    assert core_only["seams"]["contrast"] > 0.01
    assert abs(blended["seams"]["contrast"]) < core_only["seams"]["contrast"]
    assert blended["shift_consistency"]["1"] >= core_only["shift_consistency"]["1"] - 1e-3


def test_the_product_metrics_scene_is_the_probes_scene_for_every_seed() -> None:
    """``aom eval --dataset synthetic --seed N``: the product metrics were measured on the seed-0
    scene while the probes used seed N's."""
    from pipelines.evaluation import DatasetSpec
    from pipelines.evaluation.product import load_scene

    spec = DatasetSpec(name="synthetic")
    for seed in (0, 3):
        scene = load_scene(spec, seed=seed)
        assert scene is not None
        ref = synthetic_scene(n_classes=4, seed=seed)
        assert np.array_equal(scene.labels, ref.labels)
    a, b = load_scene(spec, seed=0), load_scene(spec, seed=3)
    assert a is not None and b is not None and not np.array_equal(a.labels, b.labels)
