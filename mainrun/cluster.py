"""Sweeps on a Dask cluster: workers train, the driver alone writes the ledger.

    sweep.run_sweep(spec, "quick", "lr", cluster=2)               # a LocalCluster of 2 worker processes
    sweep.run_sweep(spec, "quick", "lr", cluster="tcp://host:8786")   # a running `dask scheduler`
    python -m mainrun sweep spec.yaml --profile quick --study lr --workers 2

The driver (the process that calls `run_sweep`) resolves every point's config and run hash first
(`resolve_job`: the same execution resolution, data preparation and hash as `train.run`) and sends out only
the points that have no finished run in the ledger. A worker trains its point into a temporary ledger of its
own (`ledger.results_override`, the per-task equivalent of MAINRUN_RESULTS) and returns the run folder's
files as text; the driver writes them into the real ledger atomically (`install`: a temporary folder, then a
rename). Workers need no shared file system: the titles file travels through the cluster (`DataPlugin`, sent
once per cluster, checked by sha256 on arrival and cached under the worker's own cache folder), and the
records name the data exactly as a run on the driver does.

Faults: a task that raises is retried (`retries`); a worker process that dies mid-run has its task
rescheduled by the scheduler (up to `distributed.scheduler.allowed-failures` deaths), and a run that lands on
the same machine again resumes from its checkpoint under MAINRUN_CHECKPOINTS/<hash>/ (per machine). A driver
killed mid-sweep and started again reads every finished point back from the ledger by hash.
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


def resolve_job(cfg: Config, local: bool = False, label: str = "") -> Job:
    """The point's resolved config, run hash and ledger state, computed on the driver (data.prepare needs the
    data file here; tokenizers and ids are cached). local=True resolves like train.run on this host."""
    from .data import prepare
    from .train import not_trained, resolve_execution

    cfg = validate(cfg)
    cfg = resolve_execution(cfg) if local else resolve_for_driver(cfg)
    corpus = prepare(cfg)
    h = run_hash(cfg, corpus.fingerprint)
    run_dir = ledger.find_run(ledger.results_root(cfg.profile), h)
    summary = ledger.read_json(run_dir / "summary.json") if run_dir is not None else None
    if not (summary and summary.get("status") in ledger.TERMINAL):
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
            summary = run(cfg, force=force, progress=False, on_eval=pruner(thresholds), on_step=hook)
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


def install(job: Job, files: dict[str, str]) -> Path:
    """Write a worker's run into the ledger: a complete folder under <results>/.incoming, then one rename into
    runs/ (a reader never sees half a run). An earlier folder of the same hash (an unfinished run, or a forced
    re-run) is moved aside first and removed after; one being trained here right now is refused."""
    from .train import _lock_owner

    root = ledger.results_root(job.cfg.profile)
    files = _as_driver_records(job, files)
    incoming_root = root / ".incoming"
    incoming_root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f"{job.hash}-", dir=incoming_root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(incoming, 0o777 & ~umask)              # a run folder like any other, not mkdtemp's private 0700
    try:
        for name, text in files.items():
            (incoming / name).write_text(text)
        old = ledger.find_run(root, job.hash)
        final = old if old is not None else root / "runs" / f"{job.cfg.run_name}-{job.hash}"
        trash = None
        if old is not None:
            pid = _lock_owner(old / ".lock") if (old / ".lock").exists() else None
            if pid is not None:
                raise RuntimeError(f"run {old.name} is being trained by process {pid} on this machine; not "
                                   f"replacing it with the cluster's result")
            trash = incoming_root / f"old-{uuid.uuid4().hex}"
            os.rename(old, trash)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(incoming, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            incoming_root.rmdir()                     # only when empty: nothing else is being installed
        return final
    finally:
        if incoming.exists():
            shutil.rmtree(incoming, ignore_errors=True)


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
            self.owned = Client(c)
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

    def collect(self, job: Job, payload: dict) -> dict:
        """Install a worker's result; the summary as the ledger now holds it."""
        run_dir = install(job, payload["files"])
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
    jobs = [resolve_job(cfg, label=p.label + (f" seed={p.seed}" if p.seed is not None else "")) for p, cfg in pairs]
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
    after the others are installed. `data`: data_files(jobs), read before (the driver's file may be gone)."""
    from distributed import as_completed

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
    for h, idx in by_hash.items():
        job = jobs[idx[0]]
        futures[engine.submit(job)] = h
        _say(f"[{study} {idx[0] + 1}/{n}] {job.label} -> sent to the cluster (run {job.hash})")
    errors = []
    started = time.time()
    try:
        for fut in as_completed(list(futures), timeout=timeout) if futures else []:
            h = futures[fut]
            idx = by_hash[h]
            job = jobs[idx[0]]
            try:
                summary = engine.collect(job, fut.result())
            except Exception as e:  # noqa: BLE001 - reported after the others are installed
                errors.append((job, e))
                _say(f"    {job.label}: failed on the cluster: {type(e).__name__}: {e}")
                continue
            trained_on = summary.pop("_trained_on")
            for i in idx:
                summaries[i] = summary
            _say(f"    {job.label} -> {summary['status']}, official loss "
                           f"{summary.get('final_val_loss')!s:.8} (trained on {trained_on}, "
                           f"{time.time() - started:.0f}s into the sweep), run {summary['name']}-{h}")
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
    if errors:
        job, err = errors[0]
        raise RuntimeError(f"{len(errors)} point(s) failed on the cluster; first: {job.label} (run {job.hash}): "
                           f"{type(err).__name__}: {err}") from err
    return summaries  # type: ignore[return-value]


def _say(text: str) -> None:
    print(text, flush=True)
