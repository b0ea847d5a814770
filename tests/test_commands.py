"""Commands from the command line (`cli.main`, what `python -m mainrun` runs): `bench` and `bench --sweep` at the
smoke profile, writing their JSON where they are told and never into the checkout's results/bench/; `report`
trains nothing; `train` ends with status 3 when its run diverges. (Ctrl-C releasing the locks of the run and
checkpoint folders: tests/test_engine_edges.py, test_ctrl_c_is_one_line_and_releases_the_locks.)

Smoke profile, temporary ledgers (conftest.isolated); each test takes seconds.
"""
import json
import shutil

import pytest
import torch

import mainrun.train as train_mod
from conftest import ROOT, have_standin
from mainrun import cli

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")


def checkout_bench() -> dict[str, int]:
    """The checkout's results/bench/: each file and its modification time."""
    return {p.name: p.stat().st_mtime_ns for p in (ROOT / "results" / "bench").iterdir()}


def test_bench_writes_its_json_where_told_and_never_into_the_checkout(isolated, capsys):
    before = checkout_bench()
    out = isolated / "bench-out"
    args = ["bench", "--profile", "smoke", "--preset", "final", "--reps", "1", "--no-reference", "--set",
            "device=cpu", "precision=fp32"]
    assert cli.main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "cpu-final-fp32-precisionfp32.json").read_text())
    assert saved["config"]["profile"] == "smoke" and saved["config"]["preset"] == "final"
    assert saved["rows"]["ours"]["s_per_step"] > 0 and "reference" not in saved["rows"]
    assert "benchmark 'final-fp32-precisionfp32' on cpu" in printed
    assert cli.main([*args, "--label", "t"]) == 0        # no --out under smoke: the smoke ledger's bench/
    assert json.loads((isolated / "results" / "bench" / "cpu-t.json").read_text())["label"] == "t"
    assert checkout_bench() == before, "bench --profile smoke wrote into the checkout's results/bench/"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU --sweep packs K runs per GPU (test_cluster)")
def test_bench_sweep_from_the_command_line(isolated, capsys):
    """--sweep on the CPU: 1 run x 2 threads against 2 runs x 1 thread through the Dask engine, here with two
    smoke runs, the workload the flags name."""
    before = checkout_bench()
    out = isolated / "bench-out"
    assert cli.main(["bench", "--sweep", "--profile", "smoke", "--preset", "baseline", "--set", "batch_size=32",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "packing-cpu.json").read_text())
    assert saved["kind"] == "cpu" and saved["workload"].startswith("smoke profile, preset baseline, 2 runs")
    assert [lv["tag"] for lv in saved["levels"]] == ["1x2threads", "2x1thread"]
    assert all(x is not None for lv in saved["levels"] for x in lv["final_val_loss"])
    assert "packing benchmark (cpu): smoke profile" in printed and "2x1thread" in printed
    assert checkout_bench() == before


def test_report_trains_nothing(isolated, monkeypatch, capsys):
    """`report` over a copy of the committed ledger (its quick analysis) with training made impossible: a PDF,
    and the ledger's runs untouched."""
    root = isolated / "committed"
    shutil.copytree(ROOT / "results", root, ignore=shutil.ignore_patterns("notebooks", "jupyterlab", "*.pdf"))
    monkeypatch.setenv("MAINRUN_RESULTS", str(root))

    class NoTraining:
        def __init__(self, cfg, *a, **k):
            raise AssertionError(f"report trained {cfg.run_name}")
    monkeypatch.setattr(train_mod, "Trainer", NoTraining)
    runs = sorted(p.name for p in (root / "runs").iterdir())
    pdf = isolated / "report-quick.pdf"
    assert cli.main(["report", "--profile", "quick", "--output", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF") and f"report: {pdf}" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "runs").iterdir()) == runs


def test_train_exits_3_when_its_run_diverges(isolated, capsys):
    args = ["train", "--profile", "smoke", "--quiet", "--set", "lr=1e30", "grad_clip=0", "batch_size=32"]
    assert cli.main(args) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "diverged" and out["final_val_loss"] is None
    assert cli.main(args) == 3                           # read back from the ledger: the same status
    assert cli.main(["train", "--profile", "smoke", "--quiet", "--set", "batch_size=32"]) == 0
