"""The generic study operations and report tables on synthetic studies (agreement between two scales, seed
and test-set tables, truncation, stacking, effects against a reference), and the same functions over the
committed ledger checked against its runs' own summaries. Pure pandas: no training, no data."""
import json
import math

import pandas as pd
import pytest

from mainrun import report_text as rt
from mainrun.stats import agreement, choose_stack, fold_seed_labels, study_effects, truncation_agreement


def frame(rows):
    return pd.DataFrame([{"label": l, "status": "finished", "final_val_loss": x, "hash": h, "axis": None, "value": None,
                          "overrides": {}} for l, x, h in rows])


def test_agreement_counts_signs_and_ranks():
    seeds = frame([("final", 1.1240, "f1"), ("final-s1338", 1.1250, "f2"), ("final-s1339", 1.1230, "f3"),
                   ("attn0", 1.1276, "a1"), ("attn0-s1338", 1.1272, "a2"), ("attn0-s1339", 1.1262, "a3")])
    # full-scale deltas: relu2 -0.0025, wd0.2 +0.003, drop0.1 +0.008, zero_proj +0.0005 (inside 2 std = 0.002)
    full = frame([("relu2", 1.1215, "r"), ("wd0.2", 1.1270, "w"), ("drop0.1", 1.1320, "d"), ("zero_proj", 1.1245, "z")])
    # proxy: relu2 and drop0.1 agree, wd0.2 and zero_proj flip, attn0 agrees
    quick = frame([("final", 1.30, "q0"), ("final-s1338", 1.31, "q1"), ("relu2", 1.29, "q2"), ("wd0.2", 1.28, "q3"),
                   ("drop0.1", 1.33, "q4"), ("zero_proj", 1.30, "q5"), ("attn0", 1.306, "q6")])
    changes = ["relu2", "wd0.2", "drop0.1", "zero_proj", "attn0", "never_run"]
    table, s = agreement(fold_seed_labels(pd.concat([seeds, full], ignore_index=True)), quick, changes, "final")
    t = table.set_index("change")
    assert list(t.index) == changes[:5]                             # in the given order; unmeasured left out
    assert t.loc["attn0", "full"] == pytest.approx(0.0030)          # the three attn0 seeds' mean, not seed 1337's
    assert t.loc["relu2", "quick"] == pytest.approx(-0.015)
    assert t["same_sign"].tolist() == [True, False, True, False, True]
    assert t["full_clear"].tolist() == [True, True, True, False, True]
    assert s["pairs"] == 5 and s["sign_agreement"] == pytest.approx(0.6)
    assert s["clear_pairs"] == 4 and s["clear_sign_agreement"] == pytest.approx(0.75)
    assert s["full_seed_sd"] == pytest.approx(0.001)
    expected = t["full"].rank().corr(t["quick"].rank())
    assert s["spearman"] == pytest.approx(expected) and s["spearman"] < 1


def test_seed_table_sets_each_candidate_against_the_final_preset():
    screen = frame([("final", 1.1240, "f1"), ("final", 1.1250, "f2"), ("final", 1.1230, "f3"),
                    ("stack", 1.1180, "s1"), ("stack", 1.1190, "s2"), ("stack", 1.1185, "s3")])
    md, info = rt.seed_table(screen, "final", ["final", "attn0", "stack"], base_loss=1.7304)
    assert list(info) == ["final", "stack"]                          # attn0 was not run: no row
    assert info["stack"]["delta"] == pytest.approx(-0.0055)
    assert info["stack"]["p"] == pytest.approx(0.1)                 # every stack seed below every final seed
    stack_row = next(line for line in md.splitlines() if line.startswith("| stack |"))
    # the change in percent of the reference's mean (-0.0055 / 1.1240)
    assert f"| {1.1185 / 1.7304:.3f} |" in stack_row and "| -0.49 |" in stack_row


def test_test_table_ratios_use_the_baseline_on_the_same_text():
    results = pd.DataFrame({"hash": ["b", "f1", "f2"], "final_val_loss": [1.7, 1.12, 1.14]})
    tests = pd.DataFrame([
        {"hash": "b", "test_set": "random", "official": 1.80, "full": 1.90},
        {"hash": "b", "test_set": "late", "official": 1.60, "full": 1.70},
        {"hash": "f1", "test_set": "random", "official": 1.17, "full": 1.20},
        {"hash": "f2", "test_set": "random", "official": 1.19, "full": 1.22},
        {"hash": "f1", "test_set": "late", "official": 1.05, "full": 1.10}])   # f2 has no late reading
    base = pd.Series({"hash": "b", "final_val_loss": 1.7})
    t = rt.test_table(results, tests, base, {"baseline": ["b"], "final": ["f1", "f2"]}).set_index("candidate")
    assert t.loc["final", "val ratio"] == f"{1.13 / 1.7:.3f}"
    assert t.loc["final", "random ratio"] == f"{1.18 / 1.80:.3f}"
    assert t.loc["final", "random ratio, full coverage"] == f"{1.21 / 1.90:.3f}"
    assert t.loc["final", "late ratio"] == ""                      # a mean over some of the seeds is not shown


def test_reference_seeds_under_their_own_labels_are_the_reference():
    f = frame([("final", 1.30, "a"), ("final-s1338", 1.32, "b"), ("relu2", 1.28, "c")]).assign(
        full_val_loss=math.nan, official_coverage=0.9)
    results = pd.DataFrame({"hash": ["a", "b", "c"], "device": ["cpu"] * 3})
    rows = study_effects("x", f, "final", results)
    assert [r["change"] for r in rows] == ["relu2"]
    assert rows[0]["reference_loss"] == pytest.approx(1.31) and rows[0]["seeds"] == 1


def test_seeds_section_sets_final2_against_final_at_full_scale(tmp_path):
    from mainrun.report_inputs import _seeds_section
    seeds = frame([("base", 1.79, "b1"), ("base", 1.80, "b2"), ("joint", 1.45, "j1"), ("joint", 1.44, "j2"),
                   ("final (full scale)", 1.1234, "f1"), ("final (full scale)", 1.1240, "f2"),
                   ("final (full scale)", 1.1233, "f3"),
                   ("final2 (full scale)", 1.1201, "g1"), ("final2 (full scale)", 1.1195, "g2"),
                   ("final2 (full scale)", 1.1205, "g3")])
    info = _seeds_section(seeds, tmp_path)
    d = info["final2_vs_final"]
    assert d["delta"] == pytest.approx((1.1201 + 1.1195 + 1.1205 - 1.1234 - 1.1240 - 1.1233) / 3)
    assert d["p"] == pytest.approx(0.1) and d["n"] == [3, 3]     # every final2 seed below every final seed
    note = (tmp_path / "seeds_test.md").read_text()
    assert "final2 (full scale) against final (full scale): mean loss changed by -0.31%" in note
    assert "p = 0.10 (with 3 against 3 seeds it cannot go below 0.10)" in note
    assert "final2 (full scale)" in (tmp_path / "seeds.md").read_text()


def test_seeds_section_with_one_final2_seed_gives_no_p(tmp_path):
    from mainrun.report_inputs import _seeds_section
    seeds = frame([("final (full scale)", 1.1234, "f1"), ("final (full scale)", 1.1240, "f2"),
                   ("final2 (full scale)", 1.1201, "g1")])
    info = _seeds_section(seeds, tmp_path)
    assert info["final2_vs_final"]["p"] is None
    assert "too few seeds for a permutation test" in (tmp_path / "seeds_test.md").read_text()


def test_cpu_seeds_of_one_point_are_one_test_row():
    name = "full-14_final2-final2"
    runs = pd.DataFrame({"run": [name, f"{name}-seed1338", "full-final", f"{name}-seed1339"], "hash": list("abcd")})
    assert rt.cpu_groups(runs) == {"final2 (CPU)": ["a", "b", "d"], "final (CPU)": ["c"]}   # named by point


def test_truncation_agreement_reads_each_point_at_each_epoch():
    # three reference seeds and two changes, evaluated at half epochs of a 2-epoch run (4 evals + step 1)
    def curve(losses, max_steps=40):
        steps = [1] + [max_steps * (i + 1) // 4 for i in range(4)]
        return pd.DataFrame({"step": steps, "loss": [9.0] + losses, "epochs": 2, "max_steps": max_steps,
                             "evals_per_epoch": 2})
    screen = frame([("final", 1.0, "f1"), ("final", 1.0, "f2"), ("final", 1.0, "f3"), ("lowlr", 1.0, "l"),
                    ("wide", 1.0, "w"), ("v3k", 1.0, "v")])
    curves = {"f1": curve([2.0, 1.6, 1.3, 1.100]), "f2": curve([2.0, 1.6, 1.3, 1.102]),
              "f3": curve([2.0, 1.6, 1.3, 1.104]),
              "lowlr": curve([1.9, 1.5, 1.25, 1.120], max_steps=80),      # leads mid-run, worse at the end
              "wide": curve([1.95, 1.55, 1.28, 1.090])}                  # better throughout
    curves = {"l": curves.pop("lowlr"), "w": curves.pop("wide"), **curves, "v": curve([0.1, 0.1, 0.1, 0.1])}
    t, s = truncation_agreement(screen, curves, "final", ("v3k",))
    assert t["epoch"].tolist() == [0.5, 1.0, 1.5, 2.0] and t["pairs"].tolist() == [2] * 4   # v3k is left out
    assert t["sign_agreement"].tolist() == [0.5, 0.5, 0.5, 1.0]
    assert s["deltas"].loc[2.0, "lowlr"] == pytest.approx(0.018) and s["deltas"].loc[0.5, "wide"] == pytest.approx(-0.05)
    assert s["final_seed_sd"] == pytest.approx(0.002) and s["clear_pairs"] == 2
    assert t["spearman"].iloc[-1] == pytest.approx(1.0)


def test_summary_gives_the_last_rungs_seeds_and_their_wall_times():
    from mainrun.report_text import summary_md as _summary_md
    from mainrun.report_inputs import _stage_seeds
    seeds = frame([("final (full scale)", 1.1234, "f1"), ("final2 (full scale)", 1.1201, "g1"),
                   ("final2 (full scale)", 1.1195, "g2"), ("final2 (full scale)", 1.1205, "g3")])
    results = pd.DataFrame({"hash": ["f1", "g1", "g2", "g3"], "wall_time_s": [3370.0, 3810.0, 3500.0, 3590.0]})
    final, base = pd.Series({"stage": "final2"}), pd.Series({"final_val_loss": 1.7304})
    fs = _stage_seeds(seeds, final, base, results, "full")
    assert fs["n"] == 3 and fs["mean"] == pytest.approx(1.12003333) and fs["over_budget"] == 1
    assert fs["wall_min_s"] == 3500.0 and fs["ratio"] == pytest.approx(1.12003333 / 1.7304)
    assert _stage_seeds(seeds, pd.Series({"stage": "final"}), base, results, "full") is None   # one seed only
    n = {"formatted": {"baseline_loss": "1.7304", "baseline_bpc": "2.6", "final_loss": "1.1201", "final_bpc": "1.7",
                       "ratio": "0.647"}, "profile": "full", "final_stage": "final2", "final": {"wall_time_s": 3810.0},
         "final_device": "cpu", "n_runs": 9, "time_to_baseline_s": None, "final_seeds": fs}
    text = _summary_md(n, pd.Series({"run": "r", "official": True}), base)
    assert "Over its 3 training seeds the official loss is 1.1200 ± 0.0005 (ratio 0.647)" in text
    assert "1 of them over the budget." in text                   # no speeds recorded: nothing said of them
    results["tokens_per_s"] = [3000.0, 2500.0, 3250.0, 3200.0]
    fs = _stage_seeds(seeds, final, base, results, "full")
    assert (fs["tps_min"], fs["tps_max"]) == (2500.0, 3250.0)
    sped = _summary_md(dict(n, final_seeds=fs), pd.Series({"run": "r", "official": True}), base)
    assert ("1 of them over the budget; they trained the same steps at 2,500 to 3,250 tokens/s, so the slowest "
            "took 1.30x the fastest's time a step." in sped)
    assert "the baseline:" not in text                          # no machine recorded: nothing said of it
    # a final run on another kind of CPU, or in another precision, names its machine beside the baseline's
    # (the hardware text as results._hardware_text writes it; threads and torch version are not the machine)
    amd = "AMD EPYC (cpu, 2 CPU cores, 2 torch threads, torch 2.13.0+cpu)"
    xeon = "Intel(R) Xeon(R) Processor (cpu, 2 CPU cores, 2 torch threads, torch 2.13.0+cpu)"
    base_m = pd.Series({"final_val_loss": 1.7304, "hardware": amd, "precision": "fp32"})
    row = lambda hw, prec: pd.Series({"run": "r", "official": True, "hardware": hw, "precision": prec})  # noqa: E731
    other = _summary_md(n, row(xeon, "bf16"), base_m)
    assert ("on the CPU (Intel(R) Xeon(R) Processor, bf16; the baseline: AMD EPYC, fp32; over the 60-minute budget"
            in other)
    assert "the baseline:" not in _summary_md(n, row(amd.replace("2.13.0", "2.11.0"), "fp32"), base_m)
    assert "on the CPU (AMD EPYC, bf16; the baseline: AMD EPYC, fp32;" in _summary_md(n, row(amd, "bf16"), base_m)
    fast = dict(n, final={"wall_time_s": 2900.0})
    assert "on the CPU (Intel(R) Xeon(R) Processor, bf16; the baseline: AMD EPYC, fp32): a ratio" in _summary_md(
        fast, row(xeon, "bf16"), base_m)
    assert "on the CPU: a ratio" in _summary_md(fast, row(amd, "fp32"), base_m)


def test_seeds_section_sets_each_later_rung_against_the_one_before(tmp_path):
    from mainrun.report_inputs import _seeds_section
    seeds = frame([("final (full scale)", 1.1234, "f1"), ("final (full scale)", 1.1240, "f2"),
                   ("final2 (full scale)", 1.1201, "g1"), ("final2 (full scale)", 1.1195, "g2"),
                   ("final3 (full scale)", 1.1100, "h1"), ("final3 (full scale)", 1.1110, "h2")])
    info = _seeds_section(seeds, tmp_path)
    assert info["final2_vs_final"]["delta"] == pytest.approx((1.1201 + 1.1195 - 1.1234 - 1.1240) / 2)
    assert info["final3_vs_final2"]["delta"] == pytest.approx((1.1100 + 1.1110 - 1.1201 - 1.1195) / 2)
    assert "final3_vs_final" not in info
    note = (tmp_path / "seeds_test.md").read_text()
    assert "final3 (full scale) against final2 (full scale): mean loss changed by -0.83%" in note


def summaries(study):
    """{label: official loss} of a committed study, read straight from its runs' summary.json files."""
    rec = json.loads((COMMITTED / "studies" / "full" / f"{study}.json").read_text())
    out = {}
    for r in rec["rows"]:
        run, = (COMMITTED / "runs").glob(f"*-{r['hash']}")
        out[r["label"]] = json.loads((run / "summary.json").read_text())["final_val_loss"]
    return out


COMMITTED = __import__("pathlib").Path(__file__).resolve().parents[1] / "results"


@pytest.fixture
def committed(monkeypatch):
    """The committed ledger, read only, and the report's study roles (report/studies.yml)."""
    from mainrun.report_inputs import read_study_roles
    from mainrun.tables import load_results, read_studies
    monkeypatch.setenv("MAINRUN_RESULTS", str(COMMITTED))
    return read_studies("full"), load_results("full"), read_study_roles()


def test_every_study_the_roles_name_is_in_the_ledger(committed):
    """report/studies.yml names only recorded studies (a typo there would silently drop a table)."""
    from mainrun.tables import read_studies
    recs, _, roles = committed
    named = set(roles["gpu"]["studies"]) - {"gpu_lr", "gpu_large"}       # listed for ledgers that hold them
    named |= {s for sc in roles["screens"] for s in sc["studies"]} | {roles["stack"]["study"]}
    named |= {b["study"] for b in roles["by_cost"]} | {roles["proxy_vs_full"]["study"]}
    assert named <= set(recs), sorted(named - set(recs))
    assert {px["study"] for px in roles["agreement"]["proxies"]} <= set(recs) | set(read_studies("quick"))


def test_the_stack_recomputes_from_its_runs(committed):
    recs, results, roles = committed
    spec = roles["stack"]
    md, n = rt.stack_table(recs, results, spec, 1.7304)
    ref, st = summaries(spec["reference"]["study"]), summaries(spec["study"])
    r = [v for k, v in ref.items() if fold_seed_labels(pd.DataFrame({"label": [k]}))["label"][0] == spec["reference"]["label"]]
    k = [v for kk, v in st.items() if kk == spec["label"] or kk.startswith(spec["label"] + "-s")]
    assert n["reference_mean"] == pytest.approx(sum(r) / len(r)) and n["mean"] == pytest.approx(sum(k) / len(k))
    minus = {kk.removeprefix(spec["label"] + "-minus-"): v - sum(k) / len(k) for kk, v in st.items()
             if kk.startswith(spec["label"] + "-minus-")}
    assert n["minus"] == pytest.approx(minus) and len(minus) > 0


def test_points_by_cost_recompute_from_their_runs(committed):
    recs, results, roles = committed
    for bc in roles["by_cost"]:
        s = summaries(bc["study"])
        md, n = rt.by_cost(recs[bc["study"]], results, 1.7304, bc["reference"])
        ref = [v for kk, v in s.items() if kk == bc["reference"] or kk.startswith(bc["reference"] + "-s")]
        assert n["points"][bc["reference"]]["mean"] == pytest.approx(sum(ref) / len(ref))
        for label, p in n["points"].items():
            seeds = [v for kk, v in s.items() if kk == label or (kk.startswith(label + "-s") and kk[len(label) + 2:].isdigit())]
            assert p["mean"] == pytest.approx(sum(seeds) / len(seeds)), label
            assert p["cost"] > 0


def test_a_proxy_agreement_recomputes_from_its_runs(committed):
    """The full-data mirror's deltas are its points against its own reference's seed mean."""
    from mainrun.tables import read_studies, study_frame
    recs, results, roles = committed
    ag = roles["agreement"]
    sc = next(s for s in roles["screens"] if s["name"] == ag["screen"])
    full = rt.screen_frame(recs, results, sc["studies"], sc.get("leave_out_prefix"))
    mirror = next(px for px in ag["proxies"] if px["profile"] == "full")
    md, n = rt.agreement_table(full, {"m": study_frame(read_studies("full")[mirror["study"]], results)}, ag["reference"])
    s = summaries(mirror["study"])
    ref = [v for kk, v in s.items() if kk == ag["reference"] or kk.startswith(ag["reference"] + "-s")]
    some = next(kk for kk in s if kk != ag["reference"] and not kk.startswith(ag["reference"] + "-s"))
    line = next(line for line in md.splitlines() if line.startswith(f"| {some} "))
    mean = sum(ref) / len(ref)
    assert f"{100 * (s[some] - mean) / mean:+.2f}" in line   # in percent of the reference's seed mean
    assert 0 <= n["m"]["sign_agreement"] <= 1 and n["m"]["pairs"] >= 10


def test_choose_stack_takes_clear_wins_one_value_per_knob():
    """What beat the reference's seed mean by more than 2 std (at least 0.001), best first, one value a knob."""
    rows = [("final2", 1.1186, {}), ("final2-s1338", 1.1183, {"train_seed": 1338}),
            ("final2-s1339", 1.1188, {"train_seed": 1339}),   # sd 0.00025: threshold 0.001
            ("value_embed", 1.1150, {"value_embed": True}), ("unet", 1.1170, {"unet": True}),
            ("drop0", 1.1160, {"dropout": 0.0}), ("drop0.03", 1.1155, {"dropout": 0.03}),
            ("tied", 1.1180, {"tie_embeddings": True}), ("ns3", 1.1250, {"muon_ns_steps": 3}),
            ("L6", 1.1100, {"n_layer": 6})]
    f = pd.DataFrame([{"label": l, "status": "finished", "final_val_loss": x, "overrides": ov} for l, x, ov in rows])
    stack, members, threshold = choose_stack(f, "final2", keep_out=frozenset({"n_layer"}))
    assert threshold == pytest.approx(0.001)
    assert [m[0] for m in members] == ["value_embed", "drop0.03", "unet"]   # drop0 loses to drop0.03; L6 kept out
    assert stack == {"value_embed": True, "dropout": 0.03, "unet": True}     # tied (-0.0006) is within the noise
    assert choose_stack(f[f["label"] != "final2"].assign(label=lambda d: d["label"].str.replace("final2-s", "x-s")),
                        "final2")[0] == {}                                   # no reference: nothing stacked


def test_run_numbers_keep_the_parameter_count_an_integer_beside_an_unfinished_run():
    """An unfinished run in the ledger (no summary yet) turns the n_params column float; numbers.json must read
    the same with or without it, so a working tree with a run training writes what a clean clone writes."""
    from mainrun.report_inputs import _run_numbers
    frame = pd.DataFrame({"run": ["a", "b"], "n_params": [27172864, None]})
    assert frame["n_params"].dtype == float
    n = _run_numbers(frame.iloc[0])
    assert n["n_params"] == 27172864 and isinstance(n["n_params"], int)
    assert _run_numbers(frame.iloc[1])["n_params"] is None


def test_seeds_section_names_each_rungs_spread_beside_it(tmp_path):
    """Unequal seed counts and spreads: each rung's std stands next to its own name (they were swapped)."""
    from mainrun.report_inputs import _seeds_section
    wide, narrow = [1.1000, 1.1040, 1.1080], [1.0500, 1.0501, 1.0502, 1.0503]   # std 0.0040 and 0.0001
    seeds = frame([("final (full scale)", x, f"f{i}") for i, x in enumerate(wide)]
                  + [("final2 (full scale)", x, f"g{i}") for i, x in enumerate(narrow)])
    _seeds_section(seeds, tmp_path)
    note = (tmp_path / "seeds_test.md").read_text()
    assert "(final2 (full scale): 4 seeds, std 0.0001; final (full scale): 3 seeds, std 0.0040)" in note


def test_every_sentence_the_report_modules_ask_for_is_in_text_yml():
    """report/text.yml holds every text `say` is asked for (a missing one would fail only under the ledger
    that needs that sentence); a key built at run time ("setup.{kind}") needs its group."""
    import re
    from pathlib import Path
    from mainrun.report_text import TEXT
    pkg = Path(__file__).resolve().parents[1] / "mainrun"
    src = "".join(p.read_text() for p in [*pkg.glob("report*.py"), pkg / "analysis.py"])
    keys = set(re.findall(r'say\(f?"([\w.{}\[\]]+)"', src))
    assert len(keys) > 30
    for key in keys:
        node = TEXT
        for part in key.split("."):
            if "{" in part:
                assert isinstance(node, dict) and node, key
                break
            assert part in node, key
            node = node[part]
        else:
            assert isinstance(node, str), key
