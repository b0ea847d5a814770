"""The workbook's small parts: sweep specs, the seed test, the report's two render paths agreeing."""
import json

import pytest

from mainrun import sweep
from mainrun.formats import md_table
from mainrun.stats import permutation_p
from mainrun.report import CITE_REF, expand_includes


def test_a_spec_expands_to_named_points_then_each_axis_alone():
    pts = sweep.expand({"points": {"base": {}}, "axes": {"lr": [1e-4, 3e-4], "dropout": [0.2]}})
    assert [p.label for p in pts] == ["base", "lr=0.0001", "lr=0.0003", "dropout=0.2"]
    assert pts[1].overrides == {"lr": 1e-4} and pts[1].axis == "lr" and pts[1].value == 1e-4


def test_grid_and_seeds_multiply_points():
    pts = sweep.expand({"grid": {"lr": [1e-4, 3e-4], "dropout": [0.0, 0.1]}, "seeds": [1, 2]})
    assert len(pts) == 8
    assert {p.seed for p in pts} == {1, 2} and all(p.overrides["train_seed"] == p.seed for p in pts)


def test_a_compound_axis_value_keeps_its_extra_overrides():
    axis = sweep.accum_axis([1, 4], "linear")
    pts = sweep.expand({"axes": {"grad_accum": axis}})
    assert pts[0].overrides == {"grad_accum": 1}
    assert pts[1].overrides == {"grad_accum": 4, "lr_scaling": "linear"} and pts[1].value == 4


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="unknown sweep spec key"):
        sweep.expand({"axis": {"lr": [1e-3]}})
    with pytest.raises(ValueError, match="repeated point labels"):
        sweep.expand({"points": {"lr=0.001": {}}, "axes": {"lr": [1e-3]}})


def test_configs_take_the_base_preset_then_the_point():
    (p, cfg), = sweep.build_configs({"base": {"preset": "epic1"}, "points": {"x": {"dropout": 0.2}}}, "smoke", "t")
    assert (cfg.optimizer, cfg.dropout, cfg.profile, cfg.name) == ("adamw", 0.2, "smoke", "smoke-t-x")


def test_grids_widen_only_past_an_edge():
    assert sweep.widen([1e-4, 3e-4, 5e-4], 5e-4) == [1e-3]
    assert sweep.widen([1e-4, 3e-4, 5e-4], 1e-4) == [5e-5]
    assert sweep.widen([1e-4, 3e-4, 5e-4], 3e-4) == []


def test_permutation_p_is_exact():
    assert permutation_p([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]) == pytest.approx(0.1)  # 2 of 20 splits
    assert permutation_p([1.0], [2.0, 3.0]) is None
    # 4 against 3 that do not overlap: only that split is as extreme (the mirror split's difference is smaller)
    assert permutation_p([1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2]) == pytest.approx(1 / 35)


def test_permutation_floor_is_the_p_of_two_groups_that_do_not_overlap():
    from mainrun.stats import permutation_floor
    assert permutation_floor(3, 3) == pytest.approx(0.1)
    assert permutation_floor(4, 3) == pytest.approx(1 / 35) == permutation_floor(3, 4)
    assert permutation_floor(2, 3) == pytest.approx(0.1) and permutation_floor(1, 3) is None   # 1 of 10 splits


def test_markdown_tables_align_text_left_and_numbers_right():
    import pandas as pd

    text = md_table(pd.DataFrame({"run": ["a"], "loss": ["1.2345"]}))
    assert text.splitlines()[1] == "|:--------|--------:|"


def test_includes_and_cross_references_render_as_quarto_would(tmp_path):
    (tmp_path / "part.md").write_text("| a |\n|:--|\n| 1 |\n")
    assert expand_includes("x\n{{< include part.md >}}\n\ny\n", tmp_path) == "x\n| a |\n|:--|\n| 1 |\n\ny\n"
    assert CITE_REF.sub(r"@\1", 'See #cite(<fig-curves>, form: "prose").') == "See @fig-curves."


@pytest.mark.parametrize("profile", ["full", "quick"])
def test_the_ladder_on_disk_follows_the_one_ladder_table(profile, isolated):
    """ladder.json's entries (each "stage" a rung) come in presets.LADDER's order, the proxy's own rung after
    epic3 (studies.RUNG_ORDER): marking the committed ladder's rungs in reverse writes the committed bytes."""
    from conftest import ROOT
    from mainrun import studies

    committed = ROOT / "results" / "studies" / profile / "ladder.json"
    for e in reversed(json.loads(committed.read_text())["stages"]):
        studies.mark_stage(profile, e["stage"], {"hash": e["hash"], "label": e["label"]}, note=e["note"])
    assert (studies.studies_dir(profile) / "ladder.json").read_bytes() == committed.read_bytes()
