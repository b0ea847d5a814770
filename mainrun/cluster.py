"""Sweeps on a Dask cluster: workers train, the driver alone writes the ledger (README: Scale out, Reliability).

The driver resolves every point's run hash (`train.resolve_job`) and sends out only those without a finished run,
holding each run folder's lock until the worker's files are installed, so a second sweep of the same spec waits
for the point instead of training it again. Workers need no shared file system: the titles file travels as a
worker plugin (`DataPlugin`). A task that raises is retried; a dead worker's task is rescheduled by Dask.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from distributed import WorkerPlugin  # this module is the Dask engine: sweep.py imports it only for a cluster

from . import ledger
from .config import Config, from_dict
from .data import cache_dir, file_sha256, resolve_source
from .train import Job, pruner, run

RETRIES = 2                 # dask retries of a task that raised (a dead worker is counted separately)
TIMEOUT: float | None = None   # seconds to wait for a sweep's (or one trial's) results; None: no limit
# seconds to wait for a scheduler (an address) to answer, and then for its first worker (--scheduler-timeout)
SCHEDULER_TIMEOUT = 30.0
POLL_S = 1.0                   # how often a driver looks again at points another process is training


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


def store_data(data: DataFile) -> Path:
    """Check the bytes against their sha256 and cache them atomically under <cache>/data/<sha256>/<name> (the
    name is kept so that the records name the data as the driver's file does)."""
    got = hashlib.sha256(data.blob).hexdigest()
    if got != data.sha256:
        raise RuntimeError(f"titles file {data.name} arrived with sha256 {got}, expected {data.sha256}: "
                           f"refusing it")
    path = cache_dir() / "data" / data.sha256 / data.name
    if not (path.exists() and file_sha256(path) == data.sha256):
        ledger.atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(data.blob))
    return path


def cached_data(sha256: str, name: str) -> Path:
    """The worker's copy of a titles file that came through the cluster."""
    path = cache_dir() / "data" / sha256 / name
    if not path.exists() or file_sha256(path) != sha256:
        raise RuntimeError(f"titles file {name} (sha256 {sha256[:12]}) is not in this worker's cache "
                           f"{path.parent}: it did not arrive through the cluster (mainrun.cluster.DataPlugin)")
    return path


class DataPlugin(WorkerPlugin):
    """Caches the titles file on every worker of the cluster, present and future (a restarted one too)."""
    idempotent = True

    def __init__(self, data: DataFile):
        self.data = data

    def setup(self, worker) -> None:
        store_data(self.data)


def send_data(client, file: DataFile, name: str) -> None:
    """Cache a titles file on every worker, named as the driver's records name it. One plugin name per file
    and name, and DataPlugin is idempotent: sending it again (another Engine, a benchmark's warm-up) is a no-op."""
    client.register_plugin(DataPlugin(dataclasses.replace(file, name=name)),
                           name=f"mainrun-data-{file.sha256}-{name}")


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


# ----------------------------------------------------------------------------- the worker's side
_WARNED: list[bool] = []


def train_on_worker(cfg_dict: dict, expected_hash: str, data: tuple[str, str] | None, force: bool = False,
                    threads: int | None = 1, thresholds: dict | None = None,
                    on_step: Callable[[Config, int], None] | None = None) -> dict:
    """One run on a worker, with the titles file from the worker's cache (data = (sha256, name)) and a
    temporary ledger of its own; returns the run folder's files as text."""
    import torch
    from distributed import get_worker

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
    try:
        worker = get_worker()
    except ValueError:                       # not inside a dask worker (a direct call)
        worker = None
    base = Path(worker.local_directory if worker else tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mainrun-ledger-", dir=base, ignore_cleanup_errors=True) as scratch:
        with ledger.results_override(Path(scratch)):
            hook = (lambda step: on_step(cfg, step)) if on_step is not None else None
            # wait=True: a run of the same config that another process on this machine trains holds the
            # checkpoint folder; wait for it, never race it
            summary = run(cfg, force=force, progress=False, on_eval=pruner(thresholds), on_step=hook, wait=True,
                          discard_finished=True)
        if summary["hash"] != expected_hash:
            raise RuntimeError(f"worker {socket.gethostname()} computed run hash {summary['hash']} for a point "
                               f"the driver hashed {expected_hash}: different code or data on the two machines")
        run_dir = ledger.find_run(Path(scratch), expected_hash)
        files = {name: (run_dir / name).read_text() for name in ("config.json", "log.jsonl", "summary.json")}
    return {"hash": expected_hash, "files": files, "host": socket.gethostname(),
            "worker": worker.address if worker else None, "pid": os.getpid(), "seconds": time.time() - t0}


# ----------------------------------------------------------------------------- clusters
_LOCAL: dict[tuple, Any] = {}    # (workers, runs_per_gpu) -> a Client of a local cluster, per process


def local_cluster(workers: int, runs_per_gpu: int | None = None, gpus: int | None = None,
                  env: dict[str, str] | None = None, silence_logs: int = 50):
    """Worker processes on this machine, one thread each; with runs_per_gpu=K, K per GPU (gpus: torch's count),
    each pinned to its GPU (CUDA_VISIBLE_DEVICES) and holding resource GPU=1/K, so K runs share each GPU."""
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536; glibc then stops adapting its mmap
    # threshold, every large torch tensor is a fresh mmap, and CPU runs train 2x slower (measured). Our workers
    # start without it (an earlier nanny in this process may have left it in os.environ, which workers inherit).
    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask.config.get(key, None)):
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    if not runs_per_gpu:
        with dask.config.set({key: None}):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                silence_logs=silence_logs, env=env or {})
    if gpus is None:
        import torch
        gpus = torch.cuda.device_count()
        if not gpus:
            gpus, workers = 1, runs_per_gpu                 # the CPU stands in for one GPU
            print(f"local cluster: no GPU on this machine: {runs_per_gpu} worker processes share its CPU as "
                  f"{runs_per_gpu} runs would share one GPU", flush=True)
    if workers != gpus * runs_per_gpu:
        print(f"local cluster: {runs_per_gpu} run(s) per GPU x {gpus} GPU(s) = {gpus * runs_per_gpu} worker "
              f"processes (not {workers})", flush=True)
    specs = {f"gpu{g}-{k}": {"cls": Nanny, "options": {
        "nthreads": 1, "resources": {"GPU": 1.0 / runs_per_gpu}, "silence_logs": silence_logs,
        "env": {**(env or {}), "CUDA_VISIBLE_DEVICES": str(g)}}}
        for g in range(gpus) for k in range(runs_per_gpu)}
    with dask.config.set({key: None}):
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard": False}},
                           silence_logs=silence_logs)


def _bounded_client(address: str, timeout: float):
    """Client(address) within `timeout` seconds, or TimeoutError: a listener that accepts and stays silent
    would hold Dask's handshake past its own timeout, and one that answers in another protocol (HTTP) makes it
    read a garbage length (MemoryError) or fail otherwise: both are "not a Dask scheduler"."""
    from distributed import Client

    out: dict = {}

    def connect() -> None:
        try:
            out["client"] = Client(address, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported below as what it is
            out["error"] = e
    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 1)
    if "client" in out:
        return out["client"]
    e = out.get("error")
    if e is None or isinstance(e, (OSError, TimeoutError)):
        raise e or TimeoutError(f"no Dask handshake within {timeout:g} s")
    raise RuntimeError(f"{address} answered, but not as a Dask scheduler ({type(e).__name__}): check the address "
                       f"and its port (`dask scheduler` listens on tcp://HOST:8786 unless told otherwise)") from None


def reach_scheduler(address: str, runs_per_gpu: int | None = None, timeout: float | None = None):
    """A Client of the scheduler at `address` once it answers and has a worker (offering the resource GPU, for
    runs_per_gpu); each wait bounded by `timeout` (or SCHEDULER_TIMEOUT), then an error naming the address."""
    from distributed import Client

    timeout = SCHEDULER_TIMEOUT if timeout is None else timeout
    try:
        client = _bounded_client(address, timeout)
    except (OSError, TimeoutError) as e:
        raise RuntimeError(f"the Dask scheduler at {address} did not answer within {timeout:g} s "
                           f"({type(e).__name__}): check the address (tcp://HOST:PORT), that `dask scheduler` "
                           f"runs there and that its port is open from this machine; --scheduler-timeout sets the "
                           f"wait") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise RuntimeError(f"the Dask scheduler at {address} has no workers after {timeout:g} s: start them with "
                           f"`dask worker {address}` (on each machine that trains), or wait longer with "
                           f"--scheduler-timeout") from None
    workers = client.scheduler_info()["workers"].values() if runs_per_gpu else ()
    if runs_per_gpu and not any("GPU" in w.get("resources", {}) for w in workers):
        client.close()
        raise RuntimeError(f"no worker of the Dask scheduler at {address} offers the resource GPU that "
                           f"--runs-per-gpu asks for: start the workers with `dask worker {address} "
                           f"--resources GPU=1`")
    return client


@contextlib.contextmanager
def connect(cluster: Any, runs_per_gpu: int | None = None, timeout: float | None = None):
    """`cluster` as a dask Client: an int starts (or reuses, within this process) a local cluster of that many
    worker processes; a string is a scheduler address (reach_scheduler(cluster, runs_per_gpu, timeout)); a
    Client is used as is; a Cluster gets a Client."""
    from distributed import Client

    if isinstance(cluster, Client):
        yield cluster
    elif isinstance(cluster, int) and not isinstance(cluster, bool) and cluster >= 1:
        key = (cluster, runs_per_gpu)
        if key not in _LOCAL or _LOCAL[key].status != "running":
            lc = local_cluster(cluster, runs_per_gpu)
            _LOCAL[key] = Client(lc)
            atexit.register(lc.close)                      # at exit, after the client (atexit runs LIFO)
            atexit.register(_LOCAL[key].close)
        yield _LOCAL[key]
    elif isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):     # an address, a dask Cluster
        client = reach_scheduler(cluster, runs_per_gpu, timeout) if isinstance(cluster, str) else Client(cluster)
        with client:
            yield client
    else:
        raise ValueError(f"cluster={cluster!r} is not accepted: None (sequential, in this process), a number >= 1 "
                         f"of local workers, a scheduler address such as 'tcp://host:8786', or a dask Client")


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

    def submit(self, job: Job, thresholds: dict[int, float] | None = None):
        """Send the point out (its titles file first, once per file and cluster; hub data is fetched by each
        worker); a dask future of train_on_worker's result."""
        data = None
        if job.source.get("kind") != "hub":
            data = job.source["sha256"], job.source["name"]
            if data not in self._sent:
                file = self.data.get(data[0]) or data_files([job])[data[0]]
                self.data[data[0]] = file
                send_data(self.client, file, data[1])
                self._sent.add(data)
        key = f"mainrun-train-{job.cfg.run_name}-{job.hash}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(train_on_worker, job.cfg.to_dict(), job.hash, data, self.force, self.threads,
                                  thresholds, self.on_step, key=key, pure=False, retries=self.retries,
                                  resources=self.resources)

    def collect(self, job: Job, payload: dict, held: bool = False) -> dict:
        """Install a worker's run in the ledger while holding its folder's lock (held=True: the caller holds it);
        the old summary goes first, summary.json comes last, each file atomically, so a reader never sees half
        a run. The data is named as the driver's records name it (the worker trained on its cached copy)."""
        files = payload["files"]
        meta, summary = json.loads(files["config.json"]), json.loads(files["summary.json"])
        meta["config"]["data"] = job.cfg.data
        meta["data_source"] = summary["data_source"] = job.source
        lines = []
        for line in files["log.jsonl"].splitlines(keepends=True):
            if '"hyperparameters_configured"' in line:
                event = json.loads(line)
                if event.get("event") == "hyperparameters_configured":
                    event["data"] = job.cfg.data
                    line = json.dumps(event, default=str) + "\n"
            lines.append(line)
        final = job.folder()
        final.mkdir(parents=True, exist_ok=True)
        with contextlib.nullcontext() if held else ledger.hold(
                final / ".lock", ledger.lock_record("installing", final), f"run {final.name} is being trained by",
                "not replacing it with the cluster's result"):
            (final / "summary.json").unlink(missing_ok=True)
            ledger.atomic_write_json(final / "config.json", meta)
            ledger.atomic_write_bytes(final / "log.jsonl", lambda tmp: Path(tmp).write_text("".join(lines)))
            ledger.atomic_write_json(final / "summary.json", summary)
        return ledger.read_json(final / "summary.json")


def run_points(jobs: list[Job], client, data: dict[str, DataFile], study: str = "sweep", force: bool = False,
               train: bool = True, threads_per_run: int | None = None, runs_per_gpu: int | None = None,
               retries: int = RETRIES, timeout: float | None = None,
               on_step: Callable[[Config, int], None] | None = None) -> list[dict]:
    """Train the jobs without a finished run on the cluster, each hash once, installing each result as it
    arrives; one summary per job, in order. A run whose folder lock another process holds is waited for and
    read back, or sent after all if that process ends without one. Failures are raised after the others."""
    from distributed import wait

    engine = Engine(client, data, threads_per_run, runs_per_gpu, retries, force, on_step)
    timeout = timeout if timeout is not None else TIMEOUT
    summaries = [job.summary for job in jobs]
    by_hash: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        if train and (force or not job.done):
            by_hash.setdefault(job.hash, []).append(i)
            continue
        said = (f"official loss {job.summary.get('final_val_loss')!s:.8} (from the ledger), run "
                f"{job.summary['name']}-{job.hash}" if job.done and not force else
                f"not in the ledger as a finished run ({job.summary['status']}); not trained here (train=False)")
        print(f"[{study} {i + 1}/{len(jobs)}] {job.label}\n    -> {said}", flush=True)
    futures: dict[Any, str] = {}
    locks: dict[str, ledger.Lock] = {}
    elsewhere: dict[str, Path] = {}               # hash -> run folder that another process holds
    errors = []
    started = time.time()

    def done(h: str, summary: dict, how: str) -> None:
        for i in by_hash[h]:
            summaries[i] = summary
        print(f"    {jobs[by_hash[h][0]].label} -> {summary['status']}, official loss "
              f"{summary.get('final_val_loss')!s:.8} ({how}, {time.time() - started:.0f}s into the sweep), "
              f"run {summary['name']}-{h}", flush=True)

    def claim(h: str, first: bool) -> None:
        """Take the run's folder lock and send it out, or note who holds it."""
        job = jobs[by_hash[h][0]]
        head = f"[{study} {by_hash[h][0] + 1}/{len(jobs)}] {job.label}" if first else f"    {job.label}:"
        run_dir = job.folder()
        lock = ledger.Lock(run_dir / ".lock", ledger.lock_record("sweep driver", run_dir))
        try:
            lock.acquire()
        except ledger.Busy as busy:
            elsewhere[h] = run_dir
            if first:
                print(f"{head} -> being trained by {ledger.describe_holder(busy.holder)}: waiting for it "
                      f"(run {h})", flush=True)
            return
        summary = None if force else ledger.finished_summary(run_dir)   # finished by another process since
        if summary is not None:
            lock.release()
            return done(h, summary, "from the ledger: trained by another process")
        locks[h] = lock
        futures[engine.submit(job)] = h
        print(f"{head} -> sent to the cluster (run {h})" if first else f"{head} the process that trained it "
              f"ended without a result; sent to the cluster (run {h})", flush=True)

    try:
        for h in by_hash:
            claim(h, first=True)
        while futures or elsewhere:
            if timeout is not None and time.time() - started > timeout:
                raise RuntimeError(f"{len(futures) + len(elsewhere)} point(s) of {study} not done after "
                                   f"{timeout:g} s (the sweep's timeout)")
            if futures:
                with contextlib.suppress(TimeoutError):             # back early when a run ends
                    wait(list(futures), timeout=POLL_S, return_when="FIRST_COMPLETED")
            else:
                time.sleep(POLL_S)
            for fut in [f for f in futures if f.done()]:
                h = futures.pop(fut)
                job = jobs[by_hash[h][0]]
                try:
                    payload = fut.result()
                    done(h, engine.collect(job, payload, held=True),
                         f"trained on {payload['host']} ({payload['worker']})")
                except Exception as e:  # noqa: BLE001 - reported after the others are installed
                    errors.append((job, e))
                    print(f"    {job.label}: failed on the cluster: {type(e).__name__}: {e}", flush=True)
                finally:
                    locks.pop(h).release()
            for h in [h for h, d in elsewhere.items() if ledger.lock_holder(d / ".lock") is None]:
                del elsewhere[h]                     # the other process is gone: its result, or ours to train
                claim(h, first=False)
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
    return summaries
