"""Analysis of a ledger with runs on two kinds of device: same-device ratios, provisional ratios, GPU tables."""
import json
import os
from pathlib import Path

import pytest

from mainrun import analysis, ledger, sweep, tables
from mainrun.formats import fmt_time
from mainrun.config import make_config


def fake_run(root: Path, name: str, h: str, cfg: dict, device: str, curve: list[tuple[int, float]],
             finished: bool = True, started: str = "2026-01-01T00:00:00") -> Path:
    """A run folder as train.run writes it (config, log, summary), with a chosen validation curve."""
    d = root / "runs" / f"{name}-{h}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": cfg, "hash": h}))
    events = [{"event": "device_info", "device": device},
              {"event": "dataset_info", "val_tokens": 129_151, "val_chars": 563_154, "vocab_size": cfg["vocab_size"]}]
    events += [{"event": "training_step", "step": s, "loss": 5.0, "lr": 0.1, "max_steps": 987} for s, _ in curve]
    events += [{"event": "validation_step", "step": s, "loss": v, "max_steps": 987, "elapsed_time": float(s)}
               for s, v in curve]
    (d / "log.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    if finished:
        (d / "summary.json").write_text(json.dumps({
            "status": "finished", "final_val_loss": curve[-1][1], "full_val_bpc": 2.0, "n_params": 100,
            "started_at": started, "hardware": {"device": device}, "precision": "fp32", "official": True,
            "wall_time_s": 10.0, "tokens_per_s": 1.0}))
    return d


@pytest.fixture
def two_devices(isolated):
    root = ledger.results_root("full")
    base = make_config("full", "baseline").to_dict()
    final = make_config("full", "final").to_dict()
    gpu_base = {**base, "precision": "bf16", "device": "cuda"}
    fake_run(root, "full-gpu_ladder-baseline", "g0", gpu_base, "cuda", [(1, 2.1325), (94, 1.90), (987, 1.73)])
    fake_run(root, "full-gpu_small-x", "g1", {**final, "device": "cuda"}, "cuda", [(1, 2.3), (987, 1.12)])
    cpu_base = fake_run(root, "full-baseline", "c0", base, "cpu", [(1, 2.1325), (94, 1.9001)], finished=False)
    fake_run(root, "full-final", "c1", final, "cpu", [(1, 2.3), (987, 1.15)])
    sweep.mark_stage("full", "baseline", {"hash": "c0", "label": "baseline"})
    sweep.mark_stage("full", "final", {"hash": "c1", "label": "final"})
    return root, cpu_base


def test_ratios_are_per_device_and_provisional_until_the_cpu_baseline_finishes(two_devices):
    root, cpu_base = two_devices
    df = analysis.load_results("full").set_index("hash")
    assert df.loc["g1", "ratio_to_baseline"] == pytest.approx(1.12 / 1.73) and not df.loc["g1", "ratio_provisional"]
    assert df.loc["c1", "ratio_to_baseline"] == pytest.approx(1.15 / 1.73) and df.loc["c1", "ratio_provisional"]
    assert df.loc["c0", "status"] == "incomplete" and df.loc["c0", "last_step"] == 94
    assert df.loc["g0", "is_baseline"] and not df.loc["c0", "is_baseline"]

    n = analysis.write_report_inputs("full")
    assert n["ratio_provisional"] and n["final_device"] == "cpu" and n["baseline_device"] == "cuda"
    assert n["ratio"] == pytest.approx(1.15 / 1.73)
    assert n["curve_agreement"] == {"evaluations": 2, "last_step": 94, "max_abs_diff": pytest.approx(0.0001)}
    text = (analysis.analysis_dir("full") / "summary.md").read_text()
    assert "provisional" in text and "step 94 of 987" in text and "1.9001" in text

    # the CPU baseline finishes: CPU ratios are now against it, and nothing is provisional
    (cpu_base / "summary.json").write_text(json.dumps({
        "status": "finished", "final_val_loss": 1.75, "full_val_bpc": 2.6, "n_params": 100,
        "started_at": "2026-01-01T00:00:00", "hardware": {"device": "cpu"}, "precision": "fp32", "official": True}))
    df = analysis.load_results("full").set_index("hash")
    assert df.loc["c1", "ratio_to_baseline"] == pytest.approx(1.15 / 1.75) and not df.loc["c1", "ratio_provisional"]
    assert df.loc["g1", "ratio_to_baseline"] == pytest.approx(1.12 / 1.73)
    n = analysis.write_report_inputs("full")
    assert not n["ratio_provisional"] and n["ratio"] == pytest.approx(1.15 / 1.75)
    text = (analysis.analysis_dir("full") / "summary.md").read_text()
    assert "provisional" not in text
    # both baselines are finished: the summary says how far apart they are (1.73 vs 1.75, curves to step 94)
    assert "reproduced on two kinds of device" in text and "official loss 1.7300, -1.14%" in text
    assert n["baseline_agreement"]["evaluations"] == 2 and "differ by at most 0.0001" in text


def test_gpu_section_tables_and_figure(two_devices):
    root, _ = two_devices
    ledger.atomic_write_json(root / "studies" / "full" / "gpu_ladder.json", {
        "study": "gpu_ladder", "profile": "full", "specs": [],
        "rows": [{"label": "baseline", "axis": None, "value": None, "seed": 1337, "hash": "g0", "overrides": {}}]})
    ledger.atomic_write_json(root / "studies" / "full" / "gpu_small.json", {
        "study": "gpu_small", "profile": "full", "specs": [],
        "rows": [{"label": "x", "axis": None, "value": None, "seed": 1337, "hash": "g1", "overrides": {}}]})
    analysis.write_report_inputs("full")
    out = analysis.analysis_dir("full")
    md = (out / "gpu.md").read_text()
    assert "{#tbl-gpu-ladder}" in md and "{#tbl-gpu-small}" in md and "1.7300" in md and "0.647" in md
    assert (out / "fig-gpu-curves.png").stat().st_size > 0
    assert list(analysis.gpu_study("full", "gpu_small")["official loss"]) == ["1.1200"]


def test_no_gpu_runs_say_so(isolated):
    from mainrun.report_inputs import gpu_section, read_study_roles
    assert gpu_section("quick", analysis.load_results("quick"), isolated, None, read_study_roles()) == \
        "No run of this profile trained on a GPU.\n"


def test_a_paused_run_shows_its_running_time(two_devices):
    root, _ = two_devices
    d = fake_run(root, "full-paused", "p0", make_config("full", "final", dropout=0.0).to_dict(), "cpu",
                 [(1, 2.3), (987, 1.2)])
    # 100 steps of 10 s, an evaluation of 30 s after steps 20, 40, 60, 80; the process is stopped for an
    # hour inside step 51 (training time) and for two hours inside the evaluation after step 60
    events, t, ts = [], 0.0, 1000.0
    for step in range(1, 101):
        t += 10.0 + (3600.0 if step == 51 else 0.0)
        ts += 10.0 + (3600.0 if step == 51 else 0.0)
        events.append({"event": "training_step", "step": step, "loss": 5.0, "elapsed_time": t, "timestamp": ts})
        if step % 20 == 0:
            stop = 7200.0 if step == 60 else 0.0
            events.append({"event": "validation_step", "step": step, "loss": 2.0, "elapsed_time": t,
                           "timestamp": ts + 30.0 + stop})
            t, ts = t + 30.0 + stop, ts + 30.0 + stop
    (d / "log.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    summary = json.loads((d / "summary.json").read_text())
    summary.update(wall_time_s=t, train_time_s=1000.0 + 3600.0, tokens_per_s=100.0)
    (d / "summary.json").write_text(json.dumps(summary))

    p = tables.pauses(d).set_index("step")
    assert p.loc[50, "wall_s"] == pytest.approx(3600.0) and p.loc[50, "train_s"] == pytest.approx(3600.0)
    assert p.loc[60, "wall_s"] == pytest.approx(7200.0) and p.loc[60, "train_s"] == 0.0   # inside an evaluation
    assert p["wall_s"].sum() == pytest.approx(10800.0)
    row = analysis.load_results("full").set_index("hash").loc["p0"]
    assert row["wall_time_s"] == pytest.approx(1000.0 + 5 * 30.0) and row["wall_time_raw_s"] == pytest.approx(t)
    assert row["tokens_per_s"] == pytest.approx(100.0 * 4600.0 / 1000.0)      # only the training-time pause
    curve = analysis.read_curve(d).set_index("step")["elapsed_time"]
    assert curve[40] == pytest.approx(400.0 + 30.0 + 3600.0 - 3600.0) and curve[80] == pytest.approx(800.0 + 90.0)
    notes = analysis.metric_notes({**summary, "hash": "p0", "official_coverage": 0.95, "full_val_loss": 1.2,
                                   "val_tokens": 10, "val_chars": 40}, "full").set_index("quantity")
    assert notes.loc["wall time", "value"] == fmt_time(1150.0) and "paused" in notes.loc["wall time", "meaning"]
    n = analysis.write_report_inputs("full")
    assert n["final"]["run"] == "full-final"          # the ladder's final; the paused run is only a row
    setup = (analysis.analysis_dir("full") / "setup.md").read_text()
    assert "Paused runs.* 1 run was stopped (SIGSTOP) for " + fmt_time(10800.0) + " in all" in setup


def test_slow_steps_under_the_gap_are_not_pauses(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    t = [10.0 * i + (500.0 if i >= 50 else 0.0) for i in range(100)]      # one 510 s step: contention
    (d / "log.jsonl").write_text("\n".join(json.dumps({"event": "training_step", "step": i + 1, "elapsed_time": x,
                                                        "timestamp": x}) for i, x in enumerate(t)) + "\n")
    assert tables.pauses(d).empty


def age(path: Path, seconds: int = 60) -> None:
    """Move a file's modification time into the past (read_log caches only files older than a few seconds)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def test_log_reads_follow_the_file_and_hand_out_copies(tmp_path):
    """read_log parses a log once per version of the file (path, inode, size, mtime) once the file is a few
    seconds old: a second read reuses the parse, an appended line, a rewrite or a replaced file is parsed
    again, a file written in the last seconds is always parsed afresh, and a caller editing its events does
    not change anyone else's."""
    info = ledger._parse_log.cache_info
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"event": "training_step", "step": 1}) + "\n")
    age(path)
    hits, misses = info().hits, info().misses
    first = ledger.read_log(path)
    assert (info().hits, info().misses) == (hits, misses + 1)                    # parsed and cached
    first[0]["step"] = 99
    first.append({"event": "junk"})
    assert ledger.read_log(path) == [{"event": "training_step", "step": 1}]    # copies of the cached parse
    assert (info().hits, info().misses) == (hits + 1, misses + 1)

    # the cached parse is what a read returns: other bytes of the same size and time still read as before
    st = os.stat(path)
    path.write_text(json.dumps({"event": "training_step", "step": 7}) + "\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and os.stat(path).st_size == st.st_size
    assert ledger.read_log(path) == [{"event": "training_step", "step": 1}]
    assert (info().hits, info().misses) == (hits + 2, misses + 1)
    # ... which is why a file modified in the last few seconds is parsed afresh, not looked up
    os.utime(path)
    assert ledger.read_log(path) == [{"event": "training_step", "step": 7}]
    assert (info().hits, info().misses) == (hits + 2, misses + 1)

    with open(path, "a") as f:                                                 # appended: a new version
        f.write(json.dumps({"event": "training_step", "step": 2}) + "\n{torn")
    age(path)
    assert [e["step"] for e in ledger.read_log(path)] == [7, 2]
    assert [e["step"] for e in ledger.read_log(path)] == [7, 2]
    assert (info().hits, info().misses) == (hits + 3, misses + 2)
    other = tmp_path / "other.jsonl"                                           # replaced: a new inode
    other.write_text(json.dumps({"event": "validation_step", "step": 7}) + "\n")
    age(other, 120)
    other.replace(path)
    assert ledger.read_log(path) == [{"event": "validation_step", "step": 7}]
    assert (info().hits, info().misses) == (hits + 3, misses + 3)


def test_full_scale_findings_name_their_device_and_their_seed_spread(two_devices):
    """A one-change study at full scale says where it ran, and is judged against the final seeds' spread
    (not the proxy's): a 0.0004 difference is inside 2 x a 0.0006 std, a 0.01 difference is not."""
    root, _ = two_devices
    final = make_config("full", "final").to_dict()
    fake_run(root, "full-04_final_ablate-cosine", "a1", {**final, "schedule": "cosine"}, "cpu", [(1, 2.3), (987, 1.1504)])
    fake_run(root, "full-04_final_ablate-tied", "a2", {**final, "tie_embeddings": True}, "cpu", [(1, 2.3), (987, 1.16)])
    fake_run(root, "full-04_final-final-seed1338", "s2", {**final, "train_seed": 1338}, "cpu", [(1, 2.3), (987, 1.1508)])
    row = lambda label, h, **ov: {"label": label, "axis": None, "value": None, "seed": 1337, "hash": h, "overrides": ov}
    studies = root / "studies" / "full"
    ledger.atomic_write_json(studies / "04_final_ablate.json", {
        "study": "04_final_ablate", "profile": "full", "specs": [],
        "rows": [row("final", "c1"), row("cosine", "a1", schedule="cosine"), row("tied", "a2", tie_embeddings=True)]})
    ledger.atomic_write_json(studies / "04_final.json", {
        "study": "04_final", "profile": "full", "specs": [],
        "rows": [row("final", "c1"), {**row("final", "s2", train_seed=1338), "seed": 1338}]})
    analysis.write_report_inputs("full")
    md = (analysis.analysis_dir("full") / "findings.md").read_text()
    cosine = next(l for l in md.splitlines() if l.startswith("| cosine |"))
    tied = next(l for l in md.splitlines() if l.startswith("| tied |"))
    cells = [c.strip() for c in cosine.strip("|").split("|")]
    assert cells[:5] == ["cosine", "04_final_ablate", "final", "1.1504 vs 1.1500", "+0.03%"]
    assert cells[-1] == "inside the noise (under 2 seed std)"
    assert "inside the noise" not in tied and tied.rstrip(" |").endswith("did not help")
    # one table per scale, best first, its caption naming the scale
    caption = next(l for l in md.splitlines() if l.startswith(": What worked") and "full scale on the CPU" in l)
    assert md.index(cosine) < md.index(tied) < md.index(caption)


def test_a_tokenizer_change_is_judged_on_full_coverage(isolated):
    """The official loss divides by every character but sums only the tokens its 64 x 128 spans score: a
    tokenizer whose spans score less text looks better there without a better model. Such a finding is
    judged on the full-coverage loss (as the Unigram tokenizer on the quick proxy: -5.9% official, +0.6%
    full coverage); a change that keeps the coverage is judged on the official loss."""
    root = ledger.results_root("quick")
    base = make_config("quick", "baseline").to_dict()
    runs = {"b0": ("baseline", {}, 1.4457, 1.9061, 0.7596), "u1": ("unigram", {"tokenizer": "unigram"}, 1.3600, 1.9166, 0.7083),
            "r1": ("rdrop", {"rdrop": 1.0}, 1.4300, 1.8900, 0.7596)}
    for h, (label, ov, official, full, cov) in runs.items():
        d = fake_run(root, f"quick-x-{label}", h, {**base, **ov}, "cpu", [(1, 2.3), (161, official)])
        s = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**s, "full_val_loss": full, "official_coverage": cov}))
    sweep.mark_stage("quick", "baseline", {"hash": "b0", "label": "baseline"})
    ledger.atomic_write_json(root / "studies" / "quick" / "x.json", {"study": "x", "profile": "quick", "specs": [],
        "rows": [{"label": lab, "axis": None, "value": None, "seed": 1337, "hash": h, "overrides": ov}
                 for h, (lab, ov, *_ ) in runs.items()]})
    from mainrun.report_text import findings
    found = findings(analysis.read_studies("quick"), analysis.load_results("quick"), {}).set_index("change")
    assert found.loc["unigram", "delta"] < -0.05 and found.loc["unigram", "full_delta"] > 0
    assert found.loc["unigram", "verdict"] == "did not help" and found.loc["unigram", "judged_on"] == "full coverage"
    assert found.loc["rdrop", "verdict"] == "helped" and found.loc["rdrop", "judged_on"] == "official"
    from mainrun.report_text import findings_md
    md = findings_md(found.reset_index().assign(noise=None))
    line = next(l for l in md.splitlines() if l.startswith("| unigram |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "-5.93%" and cells[5] == "+0.55%"
    assert cells[-1].startswith("did not help, judged on the full-coverage loss") and "70.8%" in line and "76.0%" in line
    rdrop = next(l for l in md.splitlines() if l.startswith("| rdrop |"))
    assert md.index(rdrop) < md.index(line)          # best first: rdrop helped, unigram did not


def test_proxy_ranking_against_full_scale(two_devices):
    """A rung that helped on the proxy but not on the GPU ladder is marked as not holding."""
    root, _ = two_devices
    qroot = ledger.results_root("quick")
    qbase = make_config("quick", "baseline").to_dict()
    fake_run(qroot, "quick-baseline", "q0", qbase, "cpu", [(1, 2.3), (161, 2.00)])
    fake_run(qroot, "quick-epic1", "q1", {**qbase, "optimizer": "adamw"}, "cpu", [(1, 2.3), (161, 1.80)])
    sweep.mark_stage("quick", "baseline", {"hash": "q0", "label": "baseline"})
    sweep.mark_stage("quick", "epic1", {"hash": "q1", "label": "epic1"})
    fake_run(root, "full-gpu_ladder-epic1", "g2", {**make_config("full", "epic1").to_dict(), "device": "cuda"},
             "cuda", [(1, 2.3), (987, 1.90)])
    row = lambda label, h: {"label": label, "axis": None, "value": None, "seed": 1337, "hash": h, "overrides": {}}
    ledger.atomic_write_json(root / "studies" / "full" / "gpu_ladder.json", {
        "study": "gpu_ladder", "profile": "full", "specs": [], "rows": [row("baseline", "g0"), row("epic1", "g2")]})
    from mainrun.report_inputs import proxy_vs_full
    held = proxy_vs_full("full", analysis.load_results("full"), analysis.load_results("quick"),
                         analysis.read_study_roles()).set_index("change")
    assert held.loc["epic1 (rung)", "proxy"] == pytest.approx(-0.10)
    assert held.loc["epic1 (rung)", "full"] == pytest.approx(1.90 / 1.73 - 1) and not held.loc["epic1 (rung)", "holds"]
    analysis.write_report_inputs("full")
    assert "{#tbl-proxy-vs-full}" in (analysis.analysis_dir("full") / "gpu.md").read_text()
