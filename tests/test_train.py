"""Training: a smoke run end to end, the ledger, resume after a kill, divergence, the CLI."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mainrun
import mainrun.ledger as ledger
import mainrun.train as train_mod
from conftest import ROOT, have_standin
from mainrun.config import make_config

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")
SMOKE = dict(epochs=1)


def run_dirs(tmp):
    return sorted((tmp / "results" / "runs").glob("*"))


def test_smoke_run_records_everything(isolated):
    s = mainrun.run(make_config("smoke", **SMOKE), progress=False)
    assert s["status"] == "finished" and s["steps"] == s["max_steps"] > 0
    assert s["official"] is False and any("num_titles" in r for r in s["official_reasons"])
    assert 0 < s["official_coverage"] < 1 and s["final_val_loss"] < s["full_val_loss"]
    assert s["precision"] in ("fp32", "bf16") and s["tokens_per_s"] > 0 and s["wall_time_s"] > 0
    (d,) = run_dirs(isolated)
    assert d.name == f"smoke-baseline-{s['hash']}"
    events = ledger.read_log(d / "log.jsonl")
    kinds = [e["event"] for e in events]
    for k in ("hyperparameters_configured", "device_info", "dataset_info", "model_info", "training_step",
              "validation_step", "full_coverage"):
        assert k in kinds
    steps = [e for e in events if e["event"] == "training_step"]
    assert [e["step"] for e in steps] == list(range(1, s["max_steps"] + 1))
    vals = [e for e in events if e["event"] == "validation_step"]
    assert vals[0]["step"] == 1 and vals[-1]["step"] == s["max_steps"] and vals[-1]["loss"] == s["final_val_loss"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["hash"] == s["hash"] and cfg["config"]["precision"] == s["precision"]
    assert (isolated / "ckpt" / s["hash"] / "final.pt").exists()
    assert not (isolated / "ckpt" / s["hash"] / "ckpt.pt").exists()


def test_ledger_reuse_and_force(isolated, monkeypatch):
    cfg = make_config("smoke", **SMOKE)
    first = mainrun.run(cfg, progress=False)

    class NoTraining:
        def __init__(self, *a, **k):
            raise AssertionError("trained again")
    monkeypatch.setattr(train_mod, "Trainer", NoTraining)
    assert mainrun.run(make_config("smoke", name="renamed", **SMOKE), progress=False) == first
    with pytest.raises(AssertionError, match="trained again"):
        mainrun.run(cfg, force=True, progress=False)


def test_atomic_write_leaves_no_half_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    ledger.atomic_write_json(path, {"status": "finished", "loss": 1.0})

    def torn(self, text, *a, **kw):                  # half the bytes reach the disk, then it fails
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")
    monkeypatch.setattr(Path, "write_text", torn)
    with pytest.raises(OSError):
        ledger.atomic_write_json(path, {"status": "finished", "loss": 2.0})
    assert json.loads(path.read_text())["loss"] == 1.0          # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_resume_after_kill_equals_uninterrupted(isolated, monkeypatch):
    cfg = make_config("smoke", epochs=2, checkpoint_every=10, dropout=0.1)
    whole = mainrun.run(cfg, progress=False)

    monkeypatch.setenv("MAINRUN_RESULTS", str(isolated / "results2"))
    monkeypatch.setenv("MAINRUN_CHECKPOINTS", str(isolated / "ckpt2"))

    def kill_at_25(step):
        if step == 25:                      # dies between checkpoints (last one at step 20)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mainrun.run(cfg, on_step=kill_at_25, progress=False)
    (d,) = sorted((isolated / "results2" / "runs").glob("*"))
    assert not (d / "summary.json").exists()                     # unfinished: no summary
    assert ledger.load_runs(isolated / "results2")[0]["status"] == "incomplete"
    resumed = mainrun.run(cfg, progress=False)
    assert resumed["resumes"] == 1 and resumed["steps"] == whole["steps"]
    assert resumed["final_val_loss"] == whole["final_val_loss"]
    assert resumed["full_val_loss"] == whole["full_val_loss"]
    steps = [e["step"] for e in ledger.read_log(d / "log.jsonl") if e["event"] == "training_step"]
    assert steps == list(range(1, whole["steps"] + 1))           # no step logged twice or lost


def test_divergence_is_recorded(isolated):
    s = mainrun.run(make_config("smoke", lr=1e30, grad_clip=0.0, **SMOKE), progress=False)
    assert s["status"] == "diverged" and s["diverged_step"] is not None and s["steps"] == s["diverged_step"]
    (d,) = run_dirs(isolated)
    events = ledger.read_log(d / "log.jsonl")
    assert events[-1]["event"] == "diverged" and events[-1]["step"] == s["diverged_step"]
    assert mainrun.run(make_config("smoke", lr=1e30, grad_clip=0.0, **SMOKE), progress=False) == s  # recorded


def cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mainrun", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_train_then_eval_on_heldout_file(isolated, titles_file, monkeypatch):
    r = cli("train", "--profile", "smoke", "--quiet", "--set", "epochs=1", "optimizer=adamw", "lr=3e-3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "finished"
    r = cli("eval", out["hash"], "--data", str(titles_file))
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["titles"] == 3000 and ev["official_loss"] > 0 and ev["full_loss"] >= ev["official_loss"]
    # API == CLI: the same config trained again through the API, in a ledger of its own (not read back)
    monkeypatch.setenv("MAINRUN_RESULTS", str(isolated / "results-api"))
    monkeypatch.setenv("MAINRUN_CHECKPOINTS", str(isolated / "ckpt-api"))
    same = mainrun.run(make_config("smoke", epochs=1, optimizer="adamw", lr=3e-3), progress=False)
    (api_dir,) = (isolated / "results-api" / "runs").glob("*")
    assert (api_dir / "summary.json").exists() and (isolated / "ckpt-api" / same["hash"] / "final.pt").exists()
    assert same["started_at"] != json.loads(next((isolated / "results" / "runs").glob("*/summary.json"))
                                             .read_text())["started_at"]                # trained, not read
    assert same["hash"] == out["hash"] and same["final_val_loss"] == out["final_val_loss"]
    assert same["full_val_bpc"] == out["full_val_bpc"] and same["steps"] == out["steps"]


def test_cli_bad_input_is_refused_clearly():
    r = cli("train", "--profile", "smoke", "--set", "optimizer=lion")
    assert r.returncode == 2 and "optimizer='lion'" in r.stderr and "sgd, adamw, muon" in r.stderr
    r = cli("train", "--profile", "smoke", "--set", "learning_rate=1")
    assert r.returncode == 2 and "learning_rate" in r.stderr and "accepted" in r.stderr
    r = cli("train", "--profile", "smoke", "--set", "data=/no/such/file.parquet")
    assert r.returncode == 2 and "/no/such/file.parquet" in r.stderr and "MAINRUN_DATA" in r.stderr


def test_deferred_loss_reads_log_every_step_and_catch_divergence(isolated, monkeypatch):
    """On CUDA losses are read every few steps (one sync each); the log and divergence stay exact."""
    init = train_mod.Trainer.__init__

    def every_7(self, *a, **k):
        init(self, *a, **k)
        self.log_every = 7
    monkeypatch.setattr(train_mod.Trainer, "__init__", every_7)
    s = mainrun.run(make_config("smoke", **SMOKE), progress=False)
    (d,) = run_dirs(isolated)
    steps = [e["step"] for e in ledger.read_log(d / "log.jsonl") if e["event"] == "training_step"]
    assert s["status"] == "finished" and steps == list(range(1, s["max_steps"] + 1))
    bad = mainrun.run(make_config("smoke", lr=1e30, grad_clip=0.0, **SMOKE), progress=False)
    assert bad["status"] == "diverged" and bad["steps"] == bad["diverged_step"]


def test_one_process_per_run_and_no_silent_restart(isolated, monkeypatch):
    cfg = make_config("smoke", checkpoint_every=5, **SMOKE)

    def stop_at_7(step):
        if step == 7:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mainrun.run(cfg, on_step=stop_at_7, progress=False)
    (d,) = run_dirs(isolated)
    assert not (d / ".lock").exists()                         # released on the way out
    holder = ledger.Lock(d / ".lock", ledger.lock_record("training", d)).acquire()   # a live holder
    with pytest.raises(RuntimeError, match=f"being trained by process {os.getpid()}"):
        mainrun.run(cfg, progress=False)
    holder.release()
    (d / ".lock").write_text(json.dumps({"pid": 999999999}))  # a dead one's (no flock): stale, taken over
    monkeypatch.setenv("MAINRUN_CHECKPOINTS", str(isolated / "elsewhere"))
    with pytest.raises(RuntimeError, match="no checkpoint is under"):   # the log is past a checkpoint we cannot see
        mainrun.run(cfg, progress=False)
    assert mainrun.run(cfg, force=True, progress=False)["status"] == "finished"


def test_train_false_only_reads_the_ledger(isolated):
    cfg = make_config("smoke", **SMOKE)
    s = mainrun.run(cfg, train=False, progress=False)
    assert s["status"] == "missing" and s["dir"] is None and not (isolated / "results").exists()
    done = mainrun.run(cfg, progress=False)
    again = mainrun.run(cfg, train=False, progress=False)
    assert again == done and again["status"] == "finished"
    # a log without a summary (a run cut off, or training elsewhere) is reported with its progress
    run_dir = next((isolated / "results").glob("runs/*"))
    (run_dir / "summary.json").unlink()
    with pytest.raises(ledger.DamagedRun, match="summary.json is missing, but the run's log.jsonl shows it finished"):
        mainrun.run(cfg, train=False, progress=False)      # a finished run whose summary is lost is not "incomplete"
    log = (run_dir / "log.jsonl").read_text()
    (run_dir / "log.jsonl").write_text(log[: log.index('{"event": "full_coverage"')])   # cut off before its end
    s = mainrun.run(cfg, train=False, progress=False)
    assert s["status"] == "incomplete" and s["last_step"] == done["steps"] and s["last_val_loss"] is not None
    assert not (run_dir / "summary.json").exists()


def test_log_survives_its_file_being_replaced(tmp_path):
    # a `git stash` / `git checkout` under a running run swaps log.jsonl for another file
    path = tmp_path / "run" / "log.jsonl"
    path.parent.mkdir()
    log = train_mod.JsonlLog(path, restore='{"event": "training_step", "step": 1}\n')
    log.log("training_step", step=2)
    path.unlink()
    path.write_text('{"event": "training_step", "step": 1}\n')       # the stale copy put back
    log.log("training_step", step=3)
    stale = tmp_path / "stale.jsonl"
    stale.write_text("")
    os.replace(stale, path)                                          # renamed over it
    log.log("training_step", step=4)
    shutil.rmtree(path.parent)                                       # the whole (untracked) run folder
    log.log("training_step", step=5)
    log.log("training_step", step=6)
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] and log.text() == path.read_text()
    log.close()


def test_rdrop_adds_a_kl_term_and_logs_the_cross_entropy(isolated):
    """R-Drop: the objective is the two passes' mean cross-entropy plus rdrop x their symmetric KL, which
    is positive while dropout is on; the logged loss is the cross-entropy alone."""
    from mainrun.data import get_batch, prepare
    cfg = make_config("smoke", dropout=0.3, rdrop=2.0, **SMOKE)
    corpus = prepare(cfg)
    t = train_mod.Trainer(cfg, corpus, "cpu", isolated / "run", isolated / "ck", {"hash": "h"})
    xb, yb, _ = get_batch(corpus.train_ids, 0, cfg.block_size, cfg.batch_size)
    torch.manual_seed(0)
    ce, objective = t.objective(xb, yb)
    assert objective.item() > ce.item() > 0
    torch.manual_seed(0)
    z1, l1 = t.model(xb, yb)
    z2, l2 = t.model(xb, yb)
    assert ce.item() == pytest.approx(0.5 * (l1.item() + l2.item()), rel=1e-5)
    # the KL term by hand: the mean of both directions, summed over the vocabulary, averaged over tokens
    p1, p2 = torch.softmax(z1.double(), -1), torch.softmax(z2.double(), -1)
    kl = 0.5 * ((p1 * (p1.log() - p2.log())).sum(-1) + (p2 * (p2.log() - p1.log())).sum(-1)).mean()
    assert kl.item() > 0
    assert (objective - ce).item() == pytest.approx(cfg.rdrop * kl.item(), rel=1e-3)
    t.model.eval()                     # no dropout: the passes agree, the KL term vanishes
    ce, objective = t.objective(xb, yb)
    assert objective.item() == pytest.approx(ce.item(), abs=1e-6)
    s = mainrun.run(cfg, progress=False)
    assert s["status"] == "finished" and s["final_val_loss"] > 0


def test_a_run_logs_its_gradient_norm_and_update_sizes_without_changing_its_result(isolated, monkeypatch):
    """Every STABILITY_EVERY steps (and at step 1) the log holds the gradient norm before clipping and each
    parameter group's update-to-weight ratio; the same run with the probe off (in a ledger of its own) logs
    the same losses, every one, bit for bit."""
    import math
    cfg = make_config("smoke", "epic1", name="stab", precision="fp32", device="cpu")
    summary = mainrun.run(cfg, progress=False)
    run = ledger.find_run(ledger.results_root("smoke"), summary["hash"])
    log = ledger.read_log(run / "log.jsonl")
    events = [e for e in log if e["event"] == "stability"]
    steps = [e["step"] for e in events]
    assert steps[0] == 1 and steps[1:] == list(range(train_mod.STABILITY_EVERY, summary["steps"] + 1,
                                                        train_mod.STABILITY_EVERY))
    for e in events:
        assert set(e["update_ratio"]) == {"hidden", "embed", "other"} and e["grad_norm"] > 0
        assert e["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in e["grad_norm_by_group"].values())))
        assert all(0 < r < 1 for r in e["update_ratio"].values())
    with monkeypatch.context() as env:          # the probe off: no step probed, step 1 included
        env.setattr(train_mod, "STABILITY_EVERY", 10**9)
        env.setattr(train_mod, "stability_probe", lambda groups: None)
        env.setenv("MAINRUN_RESULTS", str(isolated / "results-unprobed"))
        env.setenv("MAINRUN_CHECKPOINTS", str(isolated / "ckpt-unprobed"))
        plain = mainrun.run(cfg, progress=False)
        plain_log = ledger.read_log(ledger.find_run(ledger.results_root("smoke"), plain["hash"]) / "log.jsonl")
    assert not any(e["event"] == "stability" for e in plain_log)

    def losses(events: list[dict]) -> list[tuple]:
        return [(e["event"], e["step"], e["loss"]) for e in events
                if e["event"] in ("training_step", "validation_step")]
    assert len(losses(log)) > summary["steps"] and losses(plain_log) == losses(log)
    for k in ("final_val_loss", "best_val_loss", "full_val_loss", "steps", "hash"):
        assert plain[k] == summary[k], k
