"""The results ledger: one self-describing folder per run, written atomically.

results/runs/<name>-<hash>/
    config.json   the full config, its hash, data fingerprint and source
    log.jsonl     the original's JSONL events (+ a few of ours), appended as the run goes
    summary.json  written once, at the end: status finished | diverged, metrics, hardware
A folder without summary.json is a run that is still going or was cut short.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .data import atomic_write_bytes, repo_root

# A run with one of these statuses is done: asking for its config again returns it without training.
# "pruned": stopped at an evaluation by a search's pruner (summary: pruned_step, last_val_loss), never finished.
TERMINAL = ("finished", "diverged", "pruned")


# A ledger root for the current thread's task only (a Dask worker trains into a temporary ledger of its own,
# mainrun.cluster); it wins over MAINRUN_RESULTS without touching the process environment.
_ROOT_OVERRIDE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("mainrun_results", default=None)


@contextlib.contextmanager
def results_override(root: Path):
    """Within the block, results_root() is `root` for every profile (this thread/task only)."""
    token = _ROOT_OVERRIDE.set(Path(root))
    try:
        yield
    finally:
        _ROOT_OVERRIDE.reset(token)


def results_root(profile: str) -> Path:
    """$MAINRUN_RESULTS, else results/ in the repo; smoke runs go to a temporary ledger."""
    if _ROOT_OVERRIDE.get() is not None:
        return _ROOT_OVERRIDE.get()
    if os.environ.get("MAINRUN_RESULTS"):
        return Path(os.environ["MAINRUN_RESULTS"])
    if profile == "smoke":
        return Path(tempfile.gettempdir()) / "mainrun-smoke" / "results"
    return repo_root() / "results"


def checkpoints_root() -> Path:
    """$MAINRUN_CHECKPOINTS, else ~/.cache/mainrun: outside the checkout, so a fresh clone on the same
    machine (or JupyterLab without the Makefile's environment) finds and resumes the same runs."""
    return Path(os.environ.get("MAINRUN_CHECKPOINTS", Path.home() / ".cache" / "mainrun")).expanduser()


def display_path(path: str | Path) -> str:
    """A path as committed artifacts may show it: relative to the checkout when inside it; otherwise
    `$TMPDIR/...`, `~/...` or, failing both, the file name alone. Never a machine's absolute path."""
    p = Path(path).expanduser().resolve()
    for root, label in ((repo_root(), None), (Path(tempfile.gettempdir()), "$TMPDIR"), (Path.home(), "~")):
        try:
            rel = p.relative_to(Path(root).resolve())
        except ValueError:
            continue
        return str(rel) if label is None else f"{label}/{rel}"
    return p.name


def atomic_write_json(path: Path, obj: Any) -> None:
    """Temp file in the same folder, then rename (data.atomic_write_bytes): readers never see half a file."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def write_json_if_changed(path: Path, obj: Any) -> bool:
    """atomic_write_json unless the file already holds exactly this content (a study or ladder that a
    notebook re-reads must not be rewritten). Returns whether it wrote."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    try:
        if Path(path).read_text() == text:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return True


def find_run(root: Path, run_hash: str) -> Path | None:
    hits = sorted((root / "runs").glob(f"*-{run_hash}"))
    return hits[0] if hits else None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_log(path: Path) -> list[dict]:
    """Events of a JSONL log (ours or Mainrun's baseline.log); a torn last line is skipped.

    The analysis reads each run's log from several places (table, pauses, curves, coverage); a log is
    parsed once per version of the file (path, inode, size, modification time) and each caller gets its own
    shallow copies of the events. A file changed in the last few seconds is parsed afresh every time (a
    same-size rewrite within one tick of a coarse file-system clock would otherwise look unchanged)."""
    st = os.stat(path)
    if time.time() - st.st_mtime < 5:
        return list(_parse_log.__wrapped__(str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return [dict(e) for e in _parse_log(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)]


@functools.lru_cache(maxsize=512)
def _parse_log(path: str, inode: int, size: int, mtime_ns: int) -> tuple[dict, ...]:
    events = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return tuple(events)


def log_progress(path: Path) -> dict[str, Any]:
    """How far a run's log got: device, last training step, and the last validation (None where absent)."""
    events = read_log(path) if path.exists() else []
    info = next((e for e in events if e.get("event") == "device_info"), {})
    steps = [e["step"] for e in events if e.get("event") == "training_step"]
    vals = [e for e in events if e.get("event") == "validation_step"]
    last = vals[-1] if vals else {}
    return {"device": info.get("device"), "last_step": max(steps) if steps else None,
            "max_steps": last.get("max_steps"), "last_val_step": last.get("step"), "last_val_loss": last.get("loss")}


def load_runs(root: Path | None = None) -> list[dict]:
    """Every run in a ledger: {'dir', 'config', 'summary' (None if unfinished), 'status'}."""
    root = Path(root) if root else results_root("full")
    runs = []
    for d in sorted((root / "runs").glob("*-*")):
        cfg = read_json(d / "config.json")
        if cfg is None:
            continue
        summ = read_json(d / "summary.json")
        runs.append({"dir": d, "config": cfg["config"], "hash": cfg.get("hash"), "summary": summ,
                     "status": summ["status"] if summ else "incomplete"})
    return runs


def git_state() -> dict[str, Any]:
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "mainrun"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        if not commit:  # a copy of the tree without .git (a lent GPU machine): the caller may say which commit
            return {"git_commit": os.environ.get("MAINRUN_GIT_COMMIT") or None, "git_dirty": None}
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def hardware(device: str) -> dict[str, Any]:
    import torch

    info = {"device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:   # which kind of CPU: bf16 matmuls native (AVX-512 BF16 / AMX) or emulated (AVX2 only)
        from .optim import native_bf16
        info["native_bf16"] = native_bf16("cpu")
    return info


def archive(root: Path, tarball: Path, run_glob: str, study_glob: str | None = None,
            extra_globs: tuple[str, ...] = ()) -> list[str]:
    """Tar the finished runs under root/runs matching run_glob (a run still training changes under tar, so only
    folders with a summary.json go in), the study records under root/studies matching study_glob, and any
    extra globs under root; the ledger's lock files are left out. Returns the archived paths, relative to root.
    This is how a device call brings its runs back (scripts/device_call.py)."""
    paths = [p for p in sorted((root / "runs").glob(run_glob)) if (p / "summary.json").exists()]
    paths += sorted((root / "studies").glob(study_glob)) if study_glob else []
    for g in extra_globs:
        paths += sorted(root.glob(g))
    rel = [str(p.relative_to(root)) for p in paths]
    if rel:  # tar's status 1 (a file changed while read) still leaves a readable archive; 2 is a failure
        done = subprocess.run(["tar", "czf", str(tarball), "--exclude=.lock", *rel], cwd=root)
        if done.returncode > 1:
            raise RuntimeError(f"tar of {len(rel)} ledger paths into {tarball} failed with status {done.returncode}")
    return rel
