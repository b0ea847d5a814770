"""The results ledger: one self-describing folder per run, written atomically.

results/runs/<name>-<hash>/
    config.json   the full config, its hash, data fingerprint and source
    log.jsonl     the original's JSONL events (+ a few of ours), appended as the run goes
    summary.json  written once, at the end: status finished | diverged, metrics, hardware
    .lock         held (Lock, an flock naming its holder) by the process training or installing the run
A folder without summary.json is a run that is still going or was cut short; one whose summary.json does not
parse, or whose log shows it ended without one, is damaged (finished_summary, rebuild_summary).
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import fcntl
import functools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def repo_root() -> Path:
    return Path(os.environ.get("MAINRUN_ROOT", Path(__file__).resolve().parent.parent))


def atomic_write_bytes(path: Path, write) -> None:
    """write(tmp) fills a temp file beside `path`, which then replaces it; on a failure (an OSError naming
    `path`: a full disk, a read-only ledger) the old file is untouched and no temp file is left."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:                        # a read-only ledger names the file, not mkstemp's temp name
        e.filename = str(path) if e.filename is None or str(e.filename).endswith(".tmp") else e.filename
        raise
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)         # as open() would make it (mkstemp's is 0600, private)
        os.replace(tmp, path)
    except OSError as e:
        e.filename = str(path) if e.filename in (None, tmp) else e.filename
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    """$MAINRUN_CHECKPOINTS, else ~/.cache/mainrun: outside the checkout (a fresh clone resumes the same runs)."""
    return Path(os.environ.get("MAINRUN_CHECKPOINTS", Path.home() / ".cache" / "mainrun")).expanduser()


def display_path(path: str | Path) -> str:
    """A path as committed artifacts may show it: relative to the checkout when inside it; otherwise
    `$TMPDIR/...`, `~/...` or, failing both, the file name alone. Never a machine's absolute path."""
    p = Path(path).expanduser().resolve()
    for root, label in ((repo_root(), None), (Path(tempfile.gettempdir()), "$TMPDIR"), (Path.home(), "~")):
        if p.is_relative_to(Path(root).resolve()):
            rel = p.relative_to(Path(root).resolve())
            return str(rel) if label is None else f"{label}/{rel}"
    return p.name


def shown_path(path: str | Path) -> str:
    """A path as the console shows it: relative to the checkout when inside it, else absolute."""
    p, root = Path(path).expanduser().resolve(), repo_root().resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def atomic_write_json(path: Path, obj: Any, only_if_changed: bool = False) -> bool:
    """Temp file in the same folder, then rename: readers never see half a file. only_if_changed leaves a
    file that already holds exactly this content alone. Returns whether it wrote."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if only_if_changed and Path(path).is_file() and Path(path).read_text() == text:
        return False
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return True


def find_run(root: Path, run_hash: str) -> Path | None:
    hits = sorted((root / "runs").glob(f"*-{run_hash}"))
    return hits[0] if hits else None


def read_json(path: Path) -> dict | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return json.loads(path.read_text())
    return None


def read_log(path: Path) -> list[dict]:
    """Events of a JSONL log (ours or Mainrun's baseline.log); a torn last line is skipped. Parsed once per
    version of the file (path, inode, size, mtime), each caller getting its own copies; a file changed in the
    last few seconds is parsed afresh (a coarse file-system clock could hide a same-size rewrite)."""
    st = os.stat(path)
    if time.time() - st.st_mtime < 5:
        return list(_parse_log.__wrapped__(str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return [dict(e) for e in _parse_log(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)]


@functools.lru_cache(maxsize=512)
def _parse_log(path: str, inode: int, size: int, mtime_ns: int) -> tuple[dict, ...]:
    events = []
    with open(path) as f:
        for line in filter(None, map(str.strip, f)):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return tuple(events)


def log_progress(path: Path) -> dict[str, Any]:
    """How far a run's log got: device, last training step, and the last validation (None where absent)."""
    events = read_log(path) if path.exists() else []
    info = next((e for e in events if e.get("event") == "device_info"), {})
    steps = [e["step"] for e in events if e.get("event") == "training_step"]
    vals = [e for e in events if e.get("event") == "validation_step"]
    last = vals[-1] if vals else {}
    return {"device": info.get("device"), "last_step": max(steps) if steps else None, "max_steps":
            last.get("max_steps"), "last_val_step": last.get("step"), "last_val_loss": last.get("loss")}


# ----------------------------------------------------------------------------- locks
class Busy(RuntimeError):
    """A lock held by another live process; .holder is its record (lock_record), as far as it is known."""

    def __init__(self, holder: dict):
        super().__init__(describe_holder(holder))
        self.holder = holder


def lock_record(purpose: str, ledger_dir: Path) -> dict:
    """What a lock file says about its holder: pid, host, purpose, ledger folder, since when."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
            "ledger": str(Path(ledger_dir).resolve()),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def describe_holder(holder: dict) -> str:
    """'process 123 on host h (training into /path, since ...)' from a lock record."""
    if not holder.get("pid"):
        return "a process that is still starting (its lock file is empty)"
    what = " ".join(x for x in (holder.get("purpose"), holder.get("ledger") and f"into {holder['ledger']}") if x)
    details = ", ".join(x for x in (what, holder.get("since") and f"since {holder['since']}") if x)
    return (f"process {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")
            + (f" ({details})" if details else ""))


def _holder(fd: int) -> dict:
    """The lock record in an open lock file; {} while its holder has not written it yet."""
    with contextlib.suppress(json.JSONDecodeError):
        rec = json.loads(os.pread(fd, 65536, 0).decode(errors="replace"))
        return rec if isinstance(rec, dict) else {}
    return {}


def lock_holder(path: Path) -> dict | None:
    """The record of whoever holds the lock file `path` now, or None (no file, or a stale one)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)     # closing the file releases it
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


class Lock:
    """An exclusive flock on a file, released by the kernel however its holder dies; the file holds the
    holder's lock_record, which a refused process names. acquire(wait=False) raises Busy naming the holder;
    wait=True polls until the holder is gone, calling on_wait(holder) once when it starts waiting."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record, self.fd = Path(path), record, None

    def acquire(self, wait: bool = False, on_wait=None, poll: float = 0.5) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while (holder := self._try()) is not None:
            if not wait:
                raise Busy(holder)
            if not announced and on_wait is not None:
                on_wait(holder)
                announced = True
            time.sleep(poll)
        return self

    def _try(self) -> dict | None:
        """None once held by this object, else the holder's record."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            return holder
        try:                                # the file may have been removed by its last holder meanwhile
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self._try()
        data = json.dumps(self.record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "Lock":
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold(path: Path, record: dict, refused: str, advice: str, wait: bool = False):
    """A Lock on `path` for the block: a held lock is refused as "<refused> <holder>; <advice>" (RuntimeError),
    or with wait=True waited for, saying so once on stderr."""
    lock = Lock(path, record)
    try:
        lock.acquire(wait=wait, on_wait=lambda holder: print(
            f"{refused} {describe_holder(holder)}: waiting for it", file=sys.stderr, flush=True))
    except Busy as busy:
        raise RuntimeError(f"{refused} {busy}; {advice}") from None
    with lock:
        yield lock


# ----------------------------------------------------------------------------- damaged runs
class DamagedRun(RuntimeError):
    """A summary.json (or config.json) that does not parse, or a missing one for a run whose log shows it ended."""


def zip_intact(path: Path) -> bool:
    """Whether a torch file (a zip archive) has its directory, read from its end: a truncated, empty or
    overwritten final.pt has none (cheap enough for `list`; damage inside shows when it is loaded)."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


def log_outcome(path: Path) -> str | None:
    """How a run's log says it ended: finished (the full-coverage evaluation, logged only at a normal end),
    diverged, pruned; None while it has none of these (still going, or cut off)."""
    events = {e.get("event") for e in read_log(path)} if Path(path).exists() else set()
    return next((outcome for event, outcome in (("full_coverage", "finished"), ("diverged", "diverged"),
                                                ("pruned", "pruned")) if event in events), None)


def finished_summary(run_dir: Path) -> dict | None:
    """A run's summary if it ended (finished, diverged, pruned), else None (still going, cut off, not there).
    Raises DamagedRun, saying what to do, for a summary.json that does not parse or is missing while the
    log shows the run ended: such a run is never read as unfinished."""
    path = Path(run_dir) / "summary.json"
    log = Path(run_dir) / "log.jsonl"
    repair = f"`python -m mainrun repair {Path(run_dir).name}` rebuilds it from the log and checks it against it"
    try:
        text = path.read_text()
    except FileNotFoundError:
        outcome = log_outcome(log)
        if outcome and lock_holder(Path(run_dir) / ".lock") is None:
            raise DamagedRun(f"{shown_path(path)} is missing, but the run's log.jsonl shows it {outcome}: "
                             f"{repair}")
        return None
    try:
        summary = json.loads(text)
        if not isinstance(summary, dict) or "status" not in summary:
            raise ValueError("not a summary: no 'status'")
    except ValueError as e:                      # json.JSONDecodeError is a ValueError
        outcome = log_outcome(log)
        what = (f"the run's log.jsonl shows it {outcome}: {repair}" if outcome else
                "the run's log.jsonl does not show that it ended, so nothing is lost by starting it over: move "
                "the folder aside, or train it with --force (force=True)")
        raise DamagedRun(f"{shown_path(path)} is damaged ({e}); {what}") from None
    return summary if summary.get("status") in TERMINAL else None


_TOP_LEVEL = re.compile(r'^  "(?P<key>[a-z_0-9]+)": (?P<value>-?[0-9.eE+-]+|"[^"\\]*"|true|false|null),?$', re.M)


def salvage(text: str) -> dict[str, Any]:
    """The top-level scalar fields still legible in a damaged summary.json (written with indent=2)."""
    out = {}
    for m in _TOP_LEVEL.finditer(text):
        with contextlib.suppress(json.JSONDecodeError):
            out[m["key"]] = json.loads(m["value"])
    return out


# fields of a summary the log does not hold: taken from what is legible in the damaged file, else None
NOT_IN_LOG = ("train_time_s", "tokens_per_s", "peak_rss_process_mb", "peak_cuda_mem_mb", "git_commit", "git_dirty")
# fields rebuilt from the log that a legible value in the damaged file must agree with
CHECKED = ("name", "hash", "status", "final_val_loss", "best_val_loss", "full_val_loss", "full_val_bpc", "steps",
           "max_steps", "n_params", "val_chars", "val_tokens", "official_coverage", "resumes", "diverged_step",
           "pruned_step", "official")


def summary_fields(meta: dict, status: str, step: int, rule: str | None, last_val: float | None,
                   full: dict) -> dict:
    """The summary fields that config.json (`meta`) and the run's end give: its status at `step` (by `rule` if
    diverged), its last validation loss and full-coverage result (train.Trainer.finish and rebuild_summary)."""
    cfg, diverged = meta["config"], status == "diverged"
    return {"name": cfg.get("name") or f"{cfg['profile']}-{cfg['preset']}", "hash": meta["hash"],
            "official": meta.get("official"), "official_reasons": meta.get("official_reasons"),
            "precision": cfg.get("precision"), "data_fingerprint": meta.get("data_fingerprint"),
            "data_source": meta.get("data_source"), "status": status, "steps": step,
            "diverged_step": step if diverged else None, "diverged_rule": rule if diverged else None,
            **({"pruned_step": step, "last_val_loss": last_val} if status == "pruned" else {}),
            "final_val_loss": last_val if status == "finished" else None,
            "full_val_loss": full.get("full_loss"), "full_val_bpc": full.get("full_bpc")}


def rebuild_summary(run_dir: Path, damaged_text: str = "") -> dict:
    """summary.json as train.Trainer.finish writes it, rebuilt from config.json and the complete log.jsonl of
    a run that ended. Refuses (DamagedRun) an incomplete log (opening events, steps 1..N once, the closing
    event) or one that disagrees with config.json or with a field still legible in `damaged_text`."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "config.json")
    if meta is None:
        raise DamagedRun(f"{shown_path(run_dir / 'config.json')} is missing or does not parse: the run cannot be "
                         f"rebuilt from its folder")
    log = run_dir / "log.jsonl"
    events = read_log(log) if log.exists() else []

    def first(name: str) -> dict:
        return next((e for e in events if e.get("event") == name), {})

    hp, data, model, device = (first(n) for n in ("hyperparameters_configured", "dataset_info", "model_info",
                                                  "device_info"))
    outcome = log_outcome(log)
    steps = [e["step"] for e in events if e.get("event") == "training_step"]
    vals = [e for e in events if e.get("event") == "validation_step"]
    problems = []
    if not (hp and data and model and device):
        problems.append("it lacks its opening events (hyperparameters, device, dataset, model)")
    if hp and hp.get("run_hash") != meta.get("hash"):
        problems.append(f"its run hash {hp.get('run_hash')} is not config.json's {meta.get('hash')}")
    if outcome is None:
        problems.append("it does not show that the run ended (no full_coverage, diverged or pruned event): the "
                        "run did not finish; train it again to resume it")
    if steps != list(range(1, len(steps) + 1)):
        problems.append("its training steps are not 1..N, once each")
    max_steps = vals[-1].get("max_steps") if vals else None
    end = first({"finished": "full_coverage", "diverged": "diverged", "pruned": "pruned"}.get(outcome, ""))
    if outcome == "finished" and not (vals and steps and steps[-1] == max_steps == vals[-1]["step"]):
        problems.append("it shows a full-coverage evaluation but not the last step and its validation")
    if problems:
        raise DamagedRun(f"{shown_path(log)} cannot rebuild the summary: " + "; ".join(problems))
    losses = [float(e["loss"]) for e in vals if isinstance(e.get("loss"), (int, float))]
    finite = [v for v in losses if v == v and abs(v) != float("inf")]
    resumed = [e for e in events if e.get("event") == "resumed"]
    stamp = lambda e: datetime.fromtimestamp(e["timestamp"], timezone.utc).isoformat()  # noqa: E731
    code_keys = ("git_commit", "git_dirty", "torch_version", "device")
    summary = {
        **summary_fields(meta, outcome, end.get("step") if outcome in ("diverged", "pruned") else steps[-1],
                         end.get("rule"), losses[-1] if outcome == "finished" else end.get("loss"),
                         end if outcome == "finished" else {}),
        "best_val_loss": min(finite) if finite else None, "official_coverage": data.get("official_coverage"),
        "val_chars": data.get("val_chars"), "val_tokens": data.get("val_tokens"), "max_steps": max_steps,
        "n_params": model.get("parameters_count"),
        "wall_time_s": vals[-1].get("elapsed_time") if vals else None,
        "resumes": len(resumed),
        "started_at": stamp(events[0]), "finished_at": stamp(end),
        "hardware": {k: v for k, v in device.items() if k not in ("event", "timestamp")},
        "torch_version": device.get("torch_version"), "device": device.get("device"),
        "code_history": [{"git_commit": None, "note": "not in the log (rebuilt summary)"}]
                        + [{k: e.get(k) for k in code_keys} for e in resumed],
        **{k: None for k in NOT_IN_LOG if k != "peak_cuda_mem_mb"},
    }
    old = salvage(damaged_text)
    disagree = [f"{k}: {old[k]!r} in the damaged file, {summary[k]!r} in the log" for k in CHECKED
                if k in old and k in summary and old[k] != summary[k]]
    if disagree:
        raise DamagedRun(f"{shown_path(run_dir / 'summary.json')} disagrees with the log, not rebuilt: "
                         + "; ".join(disagree))
    kept = {k: old[k] for k in (*NOT_IN_LOG, "wall_time_s") if old.get(k) is not None}
    summary.update(kept)
    summary["repaired"] = {
        "from": "log.jsonl and config.json", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kept_from_damaged_file": sorted(kept),
        "not_known": sorted(k for k in NOT_IN_LOG if summary.get(k) is None and k in summary),
        "wall_time_s": "from the damaged file" if "wall_time_s" in kept else "the elapsed time logged at the "
                       "start of the last evaluation (the original adds that evaluation)"}
    return summary


def load_runs(root: Path | None = None) -> list[dict]:
    """Every run in a ledger: {'dir', 'config', 'hash', 'summary' (None if unfinished), 'status'}; a damaged run
    has status "damaged" and 'damaged': what is wrong and what to do."""
    root = Path(root) if root else results_root("full")
    runs = []
    for d in sorted((root / "runs").glob("*-*")):
        cfg = read_json(d / "config.json")
        if cfg is None:
            continue
        try:
            summ, damaged = finished_summary(d), None
        except DamagedRun as e:
            summ, damaged = None, str(e)
        if summ is None and damaged is None:         # a summary of a run not ended is not a result either
            summ = read_json(d / "summary.json")
        runs.append({"dir": d, "config": cfg["config"], "hash": cfg.get("hash"), "summary": summ,
                     "status": "damaged" if damaged else summ["status"] if summ else "incomplete",
                     **({"damaged": damaged} if damaged else {})})
    return runs


def repair(run_dir: Path) -> tuple[bool, str]:
    """Under the run's lock: check an intact summary.json against the log (rebuild_summary), or rebuild a damaged
    or missing one from it, keeping the damaged file as summary.json.damaged. Returns (ok, what it did)."""
    run_dir = Path(run_dir)
    path, aside = run_dir / "summary.json", run_dir / "summary.json.damaged"
    with hold(run_dir / ".lock", lock_record("repairing", run_dir), f"run {run_dir.name} is being trained by",
              "repair it once that ends"):
        text, intact = path.read_text() if path.exists() else "", read_json(path)
        if isinstance(intact, dict) and "status" in intact:
            rebuilt = rebuild_summary(run_dir)
            differ = [f"{k}: {intact.get(k)!r} in summary.json, {rebuilt[k]!r} in the log" for k in CHECKED
                      if k in rebuilt and intact.get(k) != rebuilt[k]]
            if differ:
                return False, f"{shown_path(path)} disagrees with its log:\n  " + "\n  ".join(differ)
            return True, (f"{shown_path(path)} is intact and agrees with its log ({', '.join(CHECKED)}); "
                          f"nothing to repair")
        summary = rebuild_summary(run_dir, text)
        if text:
            atomic_write_bytes(aside, lambda tmp: Path(tmp).write_text(text))
        atomic_write_json(path, summary)
    unknown = summary["repaired"]["not_known"]
    return True, (f"rebuilt {shown_path(path)} from its log.jsonl: {summary['status']}, official loss "
                  f"{summary['final_val_loss']}, {summary['steps']}/{summary['max_steps']} steps; checked against "
                  f"the log" + (f" and the fields still legible in the damaged file; the damaged file is kept as "
                                f"{shown_path(aside)}" if text else "")
                  + (f"; not in the log, so unknown: {', '.join(unknown)}" if unknown else ""))


MIN_HASH_PREFIX = 4  # shorter hex strings are not taken as hash prefixes


class NoSuchRun(LookupError):
    """No run, or several, answer to a name (match_run); the message lists them, or the close names."""


def match_run(spec: str, runs: list[dict], where: str) -> dict:
    """The one run of `runs` (load_runs records from `where`) that `spec` names: by (in this order) its folder
    name `<name>-<hash>`, hash, name (`--set name=...`, else profile-preset) or a hash prefix (4+ characters).
    The first kind that matches decides; several runs by it, or none, raise NoSuchRun (naming them, or close
    names)."""
    keyed = []  # (run, folder name, name, hash)
    for r in runs:
        h = r["hash"] or r["dir"].name.rsplit("-", 1)[1]
        keyed.append((r, r["dir"].name, r["dir"].name.removesuffix("-" + h), h))
    is_prefix = len(spec) >= MIN_HASH_PREFIX and all(ch in "0123456789abcdef" for ch in spec.lower())
    for kind, match in (("folder name", lambda d, n, h: d == spec), ("hash", lambda d, n, h: h == spec),
                        ("name", lambda d, n, h: n == spec),
                        ("hash prefix", lambda d, n, h: is_prefix and h.startswith(spec.lower()))):
        hits = [r for r, *key in keyed if match(*key)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            listed = "\n".join(f"  {r['dir'].name}    ({display_path(r['dir'])})" for r in hits)
            raise NoSuchRun(f"{len(hits)} runs have the {kind} {spec!r}:\n{listed}\n"
                            f"name one of them by its folder name or hash")
    close = difflib.get_close_matches(spec, sorted({k[1] for k in keyed} | {k[2] for k in keyed}), n=5, cutoff=0.6)
    raise NoSuchRun(f"no run matches {spec!r} (a run's name, its folder name <name>-<hash>, its hash or a prefix "
                    f"of {MIN_HASH_PREFIX}+ characters) in {where}"
                    + (f"\nclose matches: {', '.join(close)}" if close else ""))


def archive(root: Path, tarball: Path, run_glob: str, study_glob: str | None = None,
            extra_globs: tuple[str, ...] = ()) -> list[str]:
    """Tar the finished runs (with a summary.json) under root/runs matching run_glob, the study records matching
    study_glob and any extra globs under root, without lock files; returns the paths, relative to root (how
    scripts/device_call.py brings runs back)."""
    paths = [p for p in sorted((root / "runs").glob(run_glob)) if (p / "summary.json").exists()]
    paths += sorted((root / "studies").glob(study_glob)) if study_glob else []
    for g in extra_globs:
        paths += sorted(root.glob(g))
    rel = [str(p.relative_to(root)) for p in paths]
    if rel:  # tar's status 1 (a file changed while read) still leaves a readable archive; 2 is a failure
        done = subprocess.run(["tar", "czf", str(tarball), "--exclude=.lock", *rel], cwd=root)
        if done.returncode > 1:
            raise RuntimeError(f"tar of {len(rel)} ledger paths into {tarball} failed with status "
                               f"{done.returncode}")
    return rel
