"""Sweeps on a Dask cluster: workers train, the driver alone writes the ledger.

    sweep.run_sweep(spec, "quick", "lr", cluster=2)               # a LocalCluster of 2 worker processes
    sweep.run_sweep(spec, "quick", "lr", cluster="tcp://host:8786")   # a running `dask scheduler`
    python -m mainrun sweep spec.yaml --profile quick --study lr --workers 2

The driver (the process that calls `run_sweep`) resolves every point's config and run hash first
(`resolve_job`: the same execution resolution, data preparation and hash as `train.run`) and sends out only
the points that have no finished run in the ledger. A worker trains its point into a temporary ledger of its
own (`ledger.results_override`, the per-task equivalent of MAINRUN_RESULTS) and returns the run folder's
files as text; the driver writes them into the real ledger (`install`: each file atomically, the summary
last, in the run's folder while it holds that folder's lock). Workers need no shared file system: the titles
file travels through the cluster (`DataPlugin`, sent once per cluster, checked by sha256 on arrival and cached
under the worker's own cache folder), and the records name the data exactly as a run on the driver does.

Faults: a task that raises is retried (`retries`); a worker process that dies mid-run has its task
rescheduled by the scheduler (up to `distributed.scheduler.allowed-failures` deaths), and a run that lands on
the same machine again resumes from its checkpoint under MAINRUN_CHECKPOINTS/<hash>/ (per machine). A driver
killed mid-sweep and started again reads every finished point back from the ledger by hash.

Locks (ledger.Lock): the driver holds a run's folder in the ledger from before it sends the run until its
result is installed, so a second sweep of the same spec waits for that point instead of training it again;
a worker holds the run's checkpoint folder while it trains (train.run), so two tasks of one config on one
machine take turns rather than delete each other's files. Bounded waits: a scheduler address that does not
answer, or has no worker, within SCHEDULER_TIMEOUT seconds is a short error naming it.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from distributed import WorkerPlugin  # this module is the Dask engine: sweep.py imports it only for a cluster

from . import ledger
from .config import Config, from_dict, run_hash, validate
from .data import cache_dir, file_sha256, resolve_source

RUN_FILES = ("config.json", "log.jsonl", "summary.json")
RETRIES = 2                 # dask retries of a task that raised (a dead worker is counted separately)
TIMEOUT: float | None = None   # seconds to wait for a sweep's (or one trial's) results; None: no limit
# seconds to wait for a scheduler (an address) to answer, and then for its first worker (--scheduler-timeout)
SCHEDULER_TIMEOUT = 30.0
POLL_S = 1.0                   # how often a driver looks again at points another process is training


# ----------------------------------------------------------------------------- the driver's view of a point
@dataclass
class Job:
    cfg: Config              # execution resolved (device, precision); the driver's own `data` field
    hash: str
    source: dict             # the data as the driver's run records name it (data.file_record or hub)
    summary: dict            # the ledger's finished/diverged/pruned summary, or a not-trained stub
    label: str = ""

    @property
    def done(self) -> bool:
        return self.summary.get("status") in ledger.TERMINAL


def resolve_for_driver(cfg: Config) -> Config:
    """Concrete device and precision without requiring the driver to own the device: a pinned device is
    kept as asked (the worker checks it exists); `auto` is resolved here, on the driver (pin device=cuda
    in the spec to train on GPU workers from a CPU driver)."""
    from .train import resolve_device, resolve_precision

    device = cfg.device if cfg.device != "auto" else resolve_device("auto")
    if cfg.precision != "auto":
        precision = cfg.precision
    else:
        precision = "bf16" if device == "cuda" else resolve_precision("auto", device)
    return dataclasses.replace(cfg, device=device, precision=precision)


def resolve_job(cfg: Config, local: bool = False, label: str = "", force: bool = False) -> Job:
    """The point's resolved config, run hash and ledger state, computed on the driver (data.prepare needs the
    data file here; tokenizers and ids are cached). local=True resolves like train.run on this host.

    A run folder whose summary is damaged stops the sweep here, before anything is sent (ledger.DamagedRun
    says what to do); with force, one whose log does not show that it ended is trained again."""
    from .data import prepare
    from .train import not_trained, refuse_discarding, resolve_execution

    cfg = validate(cfg)
    cfg = resolve_execution(cfg) if local else resolve_for_driver(cfg)
    corpus = prepare(cfg)
    h = run_hash(cfg, corpus.fingerprint)
    run_dir = ledger.find_run(ledger.results_root(cfg.profile), h)
    summary = None
    if run_dir is not None:
        if force:
            refuse_discarding(run_dir)
        try:
            summary = ledger.finished_summary(run_dir)
        except ledger.DamagedRun:
            if not force:
                raise
    if summary is None:
        summary = not_trained(cfg, h, run_dir)
    return Job(cfg, h, corpus.source, summary, label)


# ----------------------------------------------------------------------------- data through the cluster
@dataclass
class DataFile:
    """A titles file's bytes as they travel to the workers."""
    name: str
    sha256: str
    blob: bytes

    @classmethod
    def read(cls, path: str | Path) -> "DataFile":
        path = Path(path).expanduser()
        blob = path.read_bytes()
        return cls(path.name, hashlib.sha256(blob).hexdigest(), blob)


def data_cache_path(sha256: str, name: str) -> Path:
    """Where a worker keeps a transferred titles file: <cache>/data/<sha256>/<original name> (the name is kept
    so that the run records name the data as the driver's file does)."""
    return cache_dir() / "data" / sha256 / name


def store_data(data: DataFile) -> Path:
    """Check the bytes against their sha256 and cache them (atomic write); an existing cached copy is checked
    too and replaced if it does not match."""
    got = hashlib.sha256(data.blob).hexdigest()
    if got != data.sha256:
        raise RuntimeError(f"titles file {data.name} arrived with sha256 {got}, expected {data.sha256}: refusing it")
    path = data_cache_path(data.sha256, data.name)
    if path.exists() and file_sha256(path) == data.sha256:
        return path
    from .data import atomic_write_bytes
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(data.blob))
    return path


def cached_data(sha256: str, name: str) -> Path:
    path = data_cache_path(sha256, name)
    if not path.exists() or file_sha256(path) != sha256:
        raise RuntimeError(f"titles file {name} (sha256 {sha256[:12]}) is not in this worker's cache {path.parent}: "
                           f"it did not arrive through the cluster (mainrun.cluster.DataPlugin)")
    return path


class DataPlugin(WorkerPlugin):
    """Runs on every worker of the cluster, present and future (a restarted worker too): writes the titles
    file into that worker's cache after checking its sha256. Registered once per file and cluster."""
    idempotent = True

    def __init__(self, data: DataFile):
        self.data = data

    def setup(self, worker) -> None:
        store_data(self.data)


# ----------------------------------------------------------------------------- the worker's side
def pruner(thresholds: dict[int, float] | None) -> Callable[[int, float], bool] | None:
    """train.run's on_eval from per-step thresholds: stop when the best validation loss so far is above the
    threshold of this evaluation step (Optuna's MedianPruner rule with the medians given)."""
    if not thresholds:
        return None
    best = [float("inf")]

    def on_eval(step: int, val: float) -> bool:
        best[0] = min(best[0], val)
        limit = thresholds.get(step)
        return limit is not None and best[0] > limit
    return on_eval


def _worker_scratch() -> Path:
    try:
        from distributed import get_worker
        base = Path(get_worker().local_directory)
    except ValueError:                       # not inside a dask worker (a direct call)
        base = Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="mainrun-ledger-", dir=base))


_WARNED: list[bool] = []


def train_on_worker(cfg_dict: dict, expected_hash: str, data: tuple[str, str] | None, force: bool = False,
                    threads: int | None = 1, thresholds: dict | None = None,
                    on_step: Callable[[Config, int], None] | None = None) -> dict:
    """One run on a worker: the titles file from the worker's cache (data = (sha256, name), put there by
    DataPlugin), a temporary ledger of its own; returns the run folder's files as text."""
    import torch

    from .train import run

    if threads:
        torch.set_num_threads(threads)
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") and not _WARNED:
        _WARNED.append(True)
        print("mainrun: this worker runs with MALLOC_TRIM_THRESHOLD_ set (dask's nanny default): CPU training "
              "is about 2x slower; start workers with DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__"
              "MALLOC_TRIM_THRESHOLD_=None", file=sys.stderr, flush=True)
    cfg = from_dict(cfg_dict)
    if data is not None:
        cfg = dataclasses.replace(cfg, data=str(cached_data(*data)))
    scratch = _worker_scratch()
    t0 = time.time()
    try:
        with ledger.results_override(scratch):
            hook = (lambda step: on_step(cfg, step)) if on_step is not None else None
            # wait=True: a run of the same config that another process on this machine trains (another
            # worker, a driver's ledger elsewhere) holds the checkpoint folder; wait for it, never race it
            summary = run(cfg, force=force, progress=False, on_eval=pruner(thresholds), on_step=hook, wait=True,
                          discard_finished=True)
        if summary["hash"] != expected_hash:
            raise RuntimeError(f"worker {socket.gethostname()} computed run hash {summary['hash']} for a point the "
                               f"driver hashed {expected_hash}: different code or data on the two machines")
        run_dir = ledger.find_run(scratch, expected_hash)
        files = {name: (run_dir / name).read_text() for name in RUN_FILES}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        from distributed import get_worker
        worker = get_worker().address
    except ValueError:
        worker = None
    return {"hash": expected_hash, "files": files, "host": socket.gethostname(), "worker": worker,
            "pid": os.getpid(), "seconds": time.time() - t0}


# ----------------------------------------------------------------------------- the driver writes the ledger
def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"     # as ledger.atomic_write_json


def _as_driver_records(job: Job, files: dict[str, str]) -> dict[str, str]:
    """The worker trained on its cached copy of the titles file: name the data as the driver's records do
    (config.data and data_source), so a run reads the same whichever machine trained it."""
    meta = json.loads(files["config.json"])
    meta["config"]["data"] = job.cfg.data
    meta["data_source"] = job.source
    summary = json.loads(files["summary.json"])
    summary["data_source"] = job.source
    lines = []
    for line in files["log.jsonl"].splitlines(keepends=True):
        if '"hyperparameters_configured"' in line:
            event = json.loads(line)
            if event.get("event") == "hyperparameters_configured":
                event["data"] = job.cfg.data
                line = json.dumps(event, default=str) + "\n"
        lines.append(line)
    return {"config.json": _json_text(meta), "log.jsonl": "".join(lines), "summary.json": _json_text(summary)}


def install(job: Job, files: dict[str, str], held: bool = False) -> Path:
    """Write a worker's run into the ledger, in the run's folder (made if missing) while holding its lock
    (ledger.Lock: held=True when the caller holds it already, as run_points does from before it sends the run
    out): the old summary goes first, then config.json and log.jsonl, and summary.json last, each written
    atomically. A reader sees the run incomplete, then finished; never half a file. A folder that another
    process holds (a run being trained there) is refused."""
    root = ledger.results_root(job.cfg.profile)
    files = _as_driver_records(job, files)
    final = ledger.find_run(root, job.hash) or root / "runs" / f"{job.cfg.run_name}-{job.hash}"
    final.mkdir(parents=True, exist_ok=True)
    lock = contextlib.nullcontext() if held else ledger.Lock(final / ".lock", ledger.lock_record("installing", final))
    try:
        with lock:
            (final / "summary.json").unlink(missing_ok=True)
            for name in ("config.json", "log.jsonl", "summary.json"):
                text = files[name]
                ledger.atomic_write_bytes(final / name, lambda tmp, text=text: Path(tmp).write_text(text))
    except ledger.Busy as busy:
        raise RuntimeError(f"run {final.name} is being trained by {busy}; not replacing it with the cluster's "
                           f"result") from None
    return final


# ----------------------------------------------------------------------------- clusters
_LOCAL: dict[tuple, tuple[Any, Any]] = {}    # (workers, gpus, runs_per_gpu) -> (cluster, client), per process


def _close_local() -> None:
    for cluster, client in list(_LOCAL.values()):
        try:
            client.close()
            cluster.close()
        except Exception:  # noqa: BLE001 - at exit, best effort
            pass
    _LOCAL.clear()


def local_cluster(workers: int, runs_per_gpu: int | None = None, gpus: int | None = None,
                  env: dict[str, str] | None = None, silence_logs: int = 50):
    """Worker processes on this machine, one thread each (one run at a time per process).

    runs_per_gpu=K: K processes per GPU, each pinned to its GPU (CUDA_VISIBLE_DEVICES) and holding resource
    GPU=1/K, so K runs share each GPU (`workers` is then K x GPUs). gpus defaults to torch's device count."""
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS);
    # glibc then also stops adapting its mmap threshold, and every large torch tensor is a fresh mmap: a smoke
    # or quick run trains 2x slower than in a plain process (measured). Our workers start without it (an
    # earlier nanny in this process may have left it in os.environ, which workers inherit).
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    default_trim = str(dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_", None))
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == default_trim:
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    if not runs_per_gpu:
        with dask.config.set(no_trim):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                silence_logs=silence_logs, env=env or {})
    if gpus is None:
        import torch
        gpus = max(1, torch.cuda.device_count())
    if workers != gpus * runs_per_gpu:
        print(f"local cluster: {runs_per_gpu} run(s) per GPU x {gpus} GPU(s) = {gpus * runs_per_gpu} worker "
              f"processes (not {workers})", flush=True)
    specs = {}
    for g in range(gpus):
        for k in range(runs_per_gpu):
            specs[f"gpu{g}-{k}"] = {"cls": Nanny, "options": {
                "nthreads": 1, "resources": {"GPU": 1.0 / runs_per_gpu}, "silence_logs": silence_logs,
                "env": {**(env or {}), "CUDA_VISIBLE_DEVICES": str(g)}}}
    with dask.config.set(no_trim):
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard": False}},
                           silence_logs=silence_logs)


def reach_scheduler(address: str, runs_per_gpu: int | None = None, timeout: float | None = None):
    """A Client of the scheduler at `address`, once it answers and has a worker (and, for runs_per_gpu, a worker
    that offers the resource GPU): each wait bounded by `timeout` (SCHEDULER_TIMEOUT), then a short error that
    names the address and what to check."""
    from distributed import Client

    timeout = SCHEDULER_TIMEOUT if timeout is None else timeout
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise RuntimeError(f"the Dask scheduler at {address} did not answer within {timeout:g} s "
                           f"({type(e).__name__}): check the address (tcp://HOST:PORT), that `dask scheduler` runs "
                           f"there and that its port is open from this machine; --scheduler-timeout sets the wait"
                           ) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise RuntimeError(f"the Dask scheduler at {address} has no workers after {timeout:g} s: start them with "
                           f"`dask worker {address}` (on each machine that trains), or wait longer with "
                           f"--scheduler-timeout") from None
    if runs_per_gpu:
        offered = [w.get("resources", {}) for w in client.scheduler_info()["workers"].values()]
        if not any("GPU" in r for r in offered):
            client.close()
            raise RuntimeError(f"no worker of the Dask scheduler at {address} offers the resource GPU that "
                               f"--runs-per-gpu asks for: start the workers with `dask worker {address} "
                               f"--resources GPU=1`")
    return client


class connect:
    """`cluster` as a dask Client: an int starts (or reuses, within this process) a local cluster of that many
    worker processes; a string is a scheduler address; a Client is used as is; a Cluster gets a Client."""

    def __init__(self, cluster: Any, runs_per_gpu: int | None = None):
        self.cluster, self.runs_per_gpu = cluster, runs_per_gpu
        self.owned = None

    def __enter__(self):
        from distributed import Client

        c = self.cluster
        if isinstance(c, Client):
            return c
        if isinstance(c, bool) or (isinstance(c, int) and c < 1):
            raise ValueError(f"cluster={c!r}: give a number of workers >= 1, a scheduler address or a dask Client")
        if isinstance(c, int):
            key = (c, self.runs_per_gpu)
            if key not in _LOCAL or _LOCAL[key][1].status != "running":
                lc = local_cluster(c, self.runs_per_gpu)
                _LOCAL[key] = (lc, Client(lc))
                if len(_LOCAL) == 1:
                    atexit.register(_close_local)
            return _LOCAL[key][1]
        if isinstance(c, str):
            self.owned = reach_scheduler(c, self.runs_per_gpu)
            return self.owned
        if hasattr(c, "scheduler_address"):           # a dask Cluster object
            self.owned = Client(c)
            return self.owned
        raise ValueError(f"cluster={c!r} is not accepted: None (sequential, in this process), a number of local "
                         f"workers, a scheduler address such as 'tcp://host:8786', or a dask Client")

    def __exit__(self, *exc) -> None:
        if self.owned is not None:
            self.owned.close()


# ----------------------------------------------------------------------------- the engine
class Engine:
    """Submits runs to a cluster and installs their results in the ledger. Used by sweeps and searches."""

    def __init__(self, client, data: dict[str, DataFile], threads_per_run: int | None = None,
                 runs_per_gpu: int | None = None, retries: int = RETRIES, force: bool = False,
                 on_step: Callable[[Config, int], None] | None = None):
        self.client, self.data, self.threads = client, data, threads_per_run or 1
        self.resources = {"GPU": 1.0 / runs_per_gpu - 1e-9} if runs_per_gpu else None   # slack for float sums
        self.retries, self.force, self.on_step = retries, force, on_step
        self._sent: set[tuple[str, str]] = set()

    def send_data(self, job: Job) -> tuple[str, str] | None:
        """Make the point's titles file reach every worker (once per file and cluster: the plugin's name is
        the file's sha256, and an idempotent plugin is not sent again); hub data is fetched by each worker."""
        if job.source.get("kind") == "hub":
            return None
        sha, name = job.source["sha256"], job.source["name"]
        if (sha, name) not in self._sent:
            data = self.data[sha]
            if data.name != name:                     # the same bytes under another name
                data = DataFile(name, data.sha256, data.blob)
            self.client.register_plugin(DataPlugin(data), name=f"mainrun-data-{sha}-{name}")
            self._sent.add((sha, name))
        return sha, name

    def submit(self, job: Job, thresholds: dict[int, float] | None = None):
        data = self.send_data(job)
        key = f"mainrun-train-{job.cfg.run_name}-{job.hash}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(train_on_worker, job.cfg.to_dict(), job.hash, data, self.force, self.threads,
                                  thresholds, self.on_step, key=key, pure=False, retries=self.retries,
                                  resources=self.resources)

    def collect(self, job: Job, payload: dict, held: bool = False) -> dict:
        """Install a worker's result; the summary as the ledger now holds it (held: see install)."""
        run_dir = install(job, payload["files"], held)
        summary = ledger.read_json(run_dir / "summary.json")
        summary["_trained_on"] = f"{payload['host']} ({payload['worker']})"
        return summary


def data_files(jobs: list[Job]) -> dict[str, DataFile]:
    """The titles files of the jobs that will train, read once each on the driver: {sha256: DataFile}.
    Read before anything is sent: after this the driver's file may go away."""
    out: dict[str, DataFile] = {}
    for job in jobs:
        if job.source.get("kind") == "hub" or job.source["sha256"] in out:
            continue
        data = DataFile.read(resolve_source(job.cfg.data))
        if data.sha256 != job.source["sha256"]:
            raise RuntimeError(f"{data.name} changed on disk while the sweep was being prepared (sha256 "
                               f"{job.source['sha256'][:12]} -> {data.sha256[:12]})")
        out[data.sha256] = data
    return out


def run_sweep_on(pairs: list[tuple[Any, Config]], study: str, cluster: Any, force: bool = False, train: bool = True,
                 threads_per_run: int | None = None, runs_per_gpu: int | None = None, retries: int = RETRIES,
                 timeout: float | None = None) -> list[dict]:
    """sweep.run_sweep's points on a cluster: resolve every point here, send out the missing ones, install
    the results; one summary per point, in order. A sweep whose points are all in the ledger (or train=False)
    starts no cluster."""
    jobs = [resolve_job(cfg, label=p.label + (f" seed={p.seed}" if p.seed is not None else ""), force=force)
            for p, cfg in pairs]
    todo = [j for j in jobs if force or not j.done] if train else []
    if not todo:
        return run_points(jobs, None, {}, study, force, train)
    data = data_files(todo)
    timeout = timeout if timeout is not None else TIMEOUT
    with connect(cluster, runs_per_gpu) as client:
        return run_points(jobs, client, data, study, force, train, threads_per_run, runs_per_gpu, retries, timeout)


def run_points(jobs: list[Job], client, data: dict[str, DataFile], study: str = "sweep", force: bool = False,
               train: bool = True, threads_per_run: int | None = None, runs_per_gpu: int | None = None,
               retries: int = RETRIES, timeout: float | None = None,
               on_step: Callable[[Config, int], None] | None = None) -> list[dict]:
    """Train the jobs that have no finished run (each hash once) on the cluster; install each result as it
    arrives; return one summary per job, in order. A task that fails after its retries is raised at the end,
    after the others are installed. `data`: data_files(jobs), read before (the driver's file may be gone).

    Before a run is sent out the driver takes its folder's lock in the ledger (ledger.Lock, as train.run does)
    and holds it until the result is installed. A run whose lock another process holds (another sweep of the
    same spec, a `train` of the same config) is not sent: the driver waits for it and reads the result from
    the ledger, or sends it after all if that process ends without one."""
    from distributed import wait

    engine = Engine(client, data, threads_per_run, runs_per_gpu, retries, force, on_step)
    summaries: list[dict | None] = [None] * len(jobs)
    by_hash: dict[str, list[int]] = {}
    n = len(jobs)
    for i, job in enumerate(jobs):
        if job.done and not force:
            summaries[i] = job.summary
            _say(f"[{study} {i + 1}/{n}] {job.label}")
            _say(f"    -> official loss {job.summary.get('final_val_loss')!s:.8} (from the ledger), "
                           f"run {job.summary['name']}-{job.hash}")
        elif not train:
            summaries[i] = job.summary
            _say(f"[{study} {i + 1}/{n}] {job.label}")
            _say(f"    -> not in the ledger as a finished run ({job.summary['status']}); not trained "
                           f"here (train=False)")
        else:
            by_hash.setdefault(job.hash, []).append(i)
    futures: dict[Any, str] = {}
    locks: dict[str, ledger.Lock] = {}
    elsewhere: dict[str, Path] = {}               # hash -> run folder that another process holds
    errors = []
    started = time.time()

    def claim(h: str) -> dict | None:
        """Take the run's folder lock and send it out; None, else the holder's record."""
        job = jobs[by_hash[h][0]]
        root = ledger.results_root(job.cfg.profile)
        run_dir = ledger.find_run(root, h) or root / "runs" / f"{job.cfg.run_name}-{h}"
        lock = ledger.Lock(run_dir / ".lock", ledger.lock_record("sweep driver", run_dir))
        try:
            lock.acquire()
        except ledger.Busy as busy:
            elsewhere[h] = run_dir
            return busy.holder
        if not force:                               # finished by another process since it was resolved
            summary = ledger.finished_summary(run_dir)
            if summary is not None:
                lock.release()
                done(h, summary, "from the ledger: trained by another process")
                return None
        locks[h] = lock
        futures[engine.submit(job)] = h
        return None

    def done(h: str, summary: dict, how: str) -> None:
        for i in by_hash[h]:
            summaries[i] = summary
        _say(f"    {jobs[by_hash[h][0]].label} -> {summary['status']}, official loss "
             f"{summary.get('final_val_loss')!s:.8} ({how}, {time.time() - started:.0f}s into the sweep), "
             f"run {summary['name']}-{h}")

    try:
        for h, idx in by_hash.items():
            job = jobs[idx[0]]
            holder = claim(h)
            if h in futures.values():
                _say(f"[{study} {idx[0] + 1}/{n}] {job.label} -> sent to the cluster (run {job.hash})")
            elif holder is not None:
                _say(f"[{study} {idx[0] + 1}/{n}] {job.label} -> being trained by "
                     f"{ledger.describe_holder(holder)}: waiting for it (run {job.hash})")
        while futures or elsewhere:
            if timeout is not None and time.time() - started > timeout:
                raise RuntimeError(f"{len(futures) + len(elsewhere)} point(s) of {study} not done after {timeout:g} s "
                                   f"(the sweep's timeout)")
            if futures:
                try:
                    finished, _ = wait(list(futures), timeout=POLL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:                    # none done within POLL_S
                    finished = set()
            else:
                finished = set()
                time.sleep(POLL_S)
            for fut in finished:
                h = futures.pop(fut)
                job = jobs[by_hash[h][0]]
                try:
                    summary = engine.collect(job, fut.result(), held=True)
                except Exception as e:  # noqa: BLE001 - reported after the others are installed
                    errors.append((job, e))
                    _say(f"    {job.label}: failed on the cluster: {type(e).__name__}: {e}")
                    continue
                finally:
                    locks.pop(h).release()
                done(h, summary, f"trained on {summary.pop('_trained_on')}")
            for h in list(elsewhere):                  # the other process is gone: its result, or ours to train
                if ledger.lock_holder(elsewhere[h] / ".lock") is None:
                    del elsewhere[h]
                    holder = claim(h)
                    if h in futures.values():
                        _say(f"    {jobs[by_hash[h][0]].label}: the process that trained it ended without a "
                             f"result; sent to the cluster (run {h})")
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        for lock in locks.values():
            lock.release()
    if errors:
        job, err = errors[0]
        raise RuntimeError(f"{len(errors)} point(s) failed on the cluster; first: {job.label} (run {job.hash}): "
                           f"{type(err).__name__}: {err}") from err
    return summaries  # type: ignore[return-value]


def _say(text: str) -> None:
    print(text, flush=True)
