"""A run killed with SIGKILL and started again ends exactly where an uninterrupted run ends.

The `final` recipe (Muon + AdamW, WSD, an EMA of the weights) at smoke size, trained by
`python -m mainrun train` in a subprocess that the test kills, then starts again with the same command:
  A. killed between two checkpoints (the log is past the last one);
  B. killed in the middle of a checkpoint write (train.WRITE_DELAY_ENV leaves a half-written temp file
     and sleeps before the rename).
Both must resume and end with the same official and full-coverage losses (==) as a run that was never
killed, with one finished run folder and no temp file or lock left behind.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mainrun
import mainrun.ledger as ledger
import mainrun.train as train_mod
from conftest import ROOT, have_standin, isolated_module
from mainrun.config import make_config

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")

# The final recipe at smoke size: 67 optimizer steps, WSD decays over the last 13 (from step 55 on),
# checkpoints at steps 10, 20, ..., 60, evaluations at steps 1, 33, 66, 67.
OVERRIDES = dict(ema=0.99, checkpoint_every=10, d_model=32, n_head=2, n_layer=1, vocab_size=512)
COMMAND = [sys.executable, "-m", "mainrun", "train", "--profile", "smoke", "--preset", "final", "--quiet",
           "--set", *(f"{k}={v}" for k, v in OVERRIDES.items())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_cache):
    """The same config trained in one go, in this process (one torch thread, as the subprocesses)."""
    with isolated_module(tmp_path_factory, shared_cache, "uninterrupted"):
        s = mainrun.run(make_config("smoke", "final", **OVERRIDES), progress=False)
    assert s["status"] == "finished" and s["resumes"] == 0
    assert s["max_steps"] > 6 * OVERRIDES["checkpoint_every"]
    return s


class Run:
    """One `python -m mainrun train` process with its own ledger and checkpoint folder."""

    def __init__(self, where: Path, **env):
        self.results, self.ckpts = where / "results", where / "ckpt"
        self.where = where
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads()),
                    "MAINRUN_RESULTS": str(self.results), "MAINRUN_CHECKPOINTS": str(self.ckpts), **env}
        self.n = 0

    def start(self, **env) -> subprocess.Popen:
        self.n += 1
        self.err = self.where / f"stderr-{self.n}.txt"
        self.where.mkdir(parents=True, exist_ok=True)
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(COMMAND, cwd=ROOT, env={**self.env, **env}, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        return self.proc

    def stderr(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.where.name}: the run exited ({self.proc.returncode}) before {what}:\n"
                        f"{self.stderr()[-2000:]}")

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL      # reaped: no zombie holds the run's lock

    def finish(self) -> dict:
        out, _ = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, self.stderr()[-3000:]
        return json.loads(out)

    def run_dir(self) -> Path | None:
        dirs = sorted((self.results / "runs").glob("*"))
        return dirs[0] if dirs else None

    def logged_steps(self) -> list[int]:
        d = self.run_dir()
        if d is None or not (d / "log.jsonl").exists():
            return []
        steps = []
        for line in (d / "log.jsonl").read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:                         # a line being written
                continue
            if e.get("event") == "training_step":
                steps.append(e["step"])
        return steps

    def checkpoint(self) -> Path | None:
        hits = sorted(self.ckpts.glob("*/ckpt.pt"))
        return hits[0] if hits else None

    def temp_files(self) -> list[Path]:
        return sorted(p for root in (self.results, self.ckpts) for p in root.rglob("*.tmp"))


def check_resumed_equals_uninterrupted(run: Run, uninterrupted: dict, killed_at_ckpt_step: int) -> None:
    out = run.finish()
    (d,) = sorted((run.results / "runs").glob("*"))                      # one run folder
    summary = json.loads((d / "summary.json").read_text())
    assert out["hash"] == summary["hash"] == uninterrupted["hash"] and d.name.endswith(summary["hash"])
    assert summary["status"] == "finished" and summary["resumes"] == 1
    assert summary["steps"] == uninterrupted["steps"]
    assert summary["final_val_loss"] == uninterrupted["final_val_loss"]
    assert summary["full_val_loss"] == uninterrupted["full_val_loss"]
    assert summary["best_val_loss"] == uninterrupted["best_val_loss"]
    events = ledger.read_log(d / "log.jsonl")
    steps = [e["step"] for e in events if e["event"] == "training_step"]
    assert steps == list(range(1, summary["steps"] + 1))                  # no step twice, none lost
    assert [e["step"] for e in events if e["event"] == "resumed"] == [killed_at_ckpt_step]
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "log.jsonl", "summary.json"]  # no lock, no temp
    assert sorted(p.name for p in (run.ckpts / summary["hash"]).iterdir()) == ["final.pt"]
    assert run.temp_files() == []


def kill_when(conditions: dict, timeout: float = 300.0) -> None:
    """SIGKILL each run as soon as its condition holds; the runs go on side by side meanwhile."""
    t0 = time.time()
    while conditions:
        for run, (condition, what) in list(conditions.items()):
            if condition():
                run.sigkill()
                del conditions[run]
            else:
                run.alive(what)
        if time.time() - t0 > timeout:
            for run in conditions:
                run.proc.kill()
                run.proc.wait()
            pytest.fail(f"timed out waiting for {[what for _, what in conditions.values()]}")
        time.sleep(0.01)


def test_sigkill_resumes_exactly(isolated, uninterrupted):
    every = OVERRIDES["checkpoint_every"]
    a = Run(isolated / "a")                   # A: killed between two checkpoints
    b = Run(isolated / "b")                   # B: killed in the middle of a checkpoint write
    a.start()
    b.start(**{train_mod.WRITE_DELAY_ENV: "1.5"})
    kill_when({
        # A: past the checkpoint at step 50 (the last before WSD's decay), with steps the resumed run redoes
        a: (lambda: a.checkpoint() is not None and max(a.logged_steps(), default=0) >= 5 * every + 3, "step 53"),
        # B: the second write (step 20) is half on disk and paused before its rename; step 10's is in place
        b: (lambda: b.stderr().count(f"{train_mod.WRITE_DELAY_ENV}: ") >= 2, "the second checkpoint write"),
    })

    ck = torch.load(a.checkpoint(), map_location="cpu", weights_only=False)
    assert ck["step"] % every == 0 and ck["step"] < max(a.logged_steps()) < uninterrupted["max_steps"]
    assert ck["ema"] is not None and len(ck["opts"]) == 2                  # EMA, Muon and AdamW are restored
    assert not (a.run_dir() / "summary.json").exists() and (a.run_dir() / ".lock").exists()

    (tmp,) = b.temp_files()
    assert tmp.name.startswith("ckpt.pt.") and tmp.stat().st_size > 0
    assert torch.load(b.checkpoint(), map_location="cpu", weights_only=False)["step"] == every
    assert max(b.logged_steps()) == 2 * every and not (b.run_dir() / "summary.json").exists()

    a.start()                                                              # the same command again
    b.start()                                                              # (without the write delay)
    check_resumed_equals_uninterrupted(a, uninterrupted, ck["step"])
    check_resumed_equals_uninterrupted(b, uninterrupted, every)


def test_killed_during_the_first_checkpoint_write_starts_over(isolated, uninterrupted, monkeypatch):
    """Cut off while writing its first checkpoint, a run has a log that reached that step and no checkpoint
    beside it: started again, it trains from step 0 (not refused) and ends as an uninterrupted run. A log
    past the first checkpoint step without a checkpoint is still refused (the checkpoint is elsewhere)."""
    cfg = make_config("smoke", "final", **OVERRIDES)
    save = train_mod._atomic_save

    def dies_in_the_write(obj, path):
        if path.name == "ckpt.pt":
            raise KeyboardInterrupt                    # as a kill: the log is at step 10, no ckpt.pt
        save(obj, path)
    monkeypatch.setattr(train_mod, "_atomic_save", dies_in_the_write)
    with pytest.raises(KeyboardInterrupt):
        mainrun.run(cfg, progress=False)
    monkeypatch.setattr(train_mod, "_atomic_save", save)
    (d,) = sorted((isolated / "results" / "runs").glob("*"))
    assert ledger.log_progress(d / "log.jsonl")["last_step"] == cfg.checkpoint_every
    assert not list((isolated / "ckpt").rglob("*.pt"))
    again = mainrun.run(cfg, progress=False)
    assert again["resumes"] == 0 and again["final_val_loss"] == uninterrupted["final_val_loss"]
    assert again["full_val_loss"] == uninterrupted["full_val_loss"]
    steps = [e["step"] for e in ledger.read_log(d / "log.jsonl") if e["event"] == "training_step"]
    assert steps == list(range(1, again["steps"] + 1))

    log = d / "log.jsonl"                              # one step further, the checkpoint must exist
    log.write_text("".join(json.dumps({"event": "training_step", "step": s}) + "\n"
                           for s in range(1, cfg.checkpoint_every + 2)))
    with pytest.raises(RuntimeError, match="no checkpoint is under"):
        train_mod.check_resumable(d, isolated / "elsewhere", cfg)
