"""Adaptive search: Optuna's TPE over ranges of config fields, every trial an ordinary ledger run.

    spec = {"search": {"space": {"lr": {"log_uniform": [1e-4, 3e-3]}, "dropout": {"uniform": [0.0, 0.2]},
                                 "n_layer": {"choice": [2, 3]}},     # also int, log_int; a choice may be a dict
                       "trials": 12, "parallel": 2, "sampler": "tpe", "seed": 1337, "prune": True},
            "base": {"preset": "epic1"}}
    df = sweep.run_sweep(spec, "quick", "search", cluster=2)      # or cluster=None: in this process

Trial n (the run `<profile>-<study>-t<n>`) is asked once trial n - parallel has been told, with the sampler
seeded seed + n: a search asks for the same trials here or on a cluster, in one go or resumed from its journal
(<study>.optuna.jsonl beside the study record), and a trial whose run is in the ledger is told from it. Pruning
applies MedianPruner's rule on the worker with per-step medians frozen when the trial is asked (reproducible).
"""
from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import ledger
from .config import Config
from .studies import SUMMARY_COLUMNS, build_configs, record_study, run_name, studies_dir

SEARCH_KEYS = ("space", "trials", "parallel", "sampler", "seed", "prune", "startup_trials", "prune_startup",
               "prune_warmup_steps")
KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
SAMPLERS = ("tpe", "random")
# keys that may change between the runs of one search (the budget and how it is run)
MUTABLE = ("trials", "parallel")


@dataclass
class SearchSpec:
    space: dict[str, dict]
    trials: int
    parallel: int = 1
    sampler: str = "tpe"
    seed: int = 1337
    prune: bool = False
    startup_trials: int = 10          # TPE's random start (Optuna's default)
    prune_startup: int = 5            # completed trials before pruning starts (MedianPruner's default)
    prune_warmup_steps: int = 2       # no pruning before this step (step 1 measures the initial weights)
    base: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What makes two searches the same search (budget and parallelism left out)."""
        d = {k: getattr(self, k) for k in SEARCH_KEYS if k not in MUTABLE}
        return json.loads(json.dumps({**d, "base": self.base}, sort_keys=True, default=str))


def parse(spec: dict) -> SearchSpec:
    """A search spec ({"search": {...}, "base": {...}}), checked, with clear messages."""
    unknown = sorted(set(spec) - {"search", "base"})
    if unknown:
        raise ValueError(f"a search spec has the keys 'search' and 'base'; not {', '.join(unknown)}")
    s = dict(spec["search"])
    bad = sorted(set(s) - set(SEARCH_KEYS))
    if bad:
        raise ValueError(f"unknown search key(s): {', '.join(bad)}; accepted: {', '.join(SEARCH_KEYS)}")
    if "space" not in s or "trials" not in s or not s["space"]:
        raise ValueError("a search needs a non-empty 'space' and a number of 'trials'")
    out = SearchSpec(**s, base=dict(spec.get("base", {})))
    if out.sampler not in SAMPLERS:
        raise ValueError(f"sampler={out.sampler!r} is not accepted; choose one of: {', '.join(SAMPLERS)}")
    for name in ("trials", "parallel"):
        if not isinstance(getattr(out, name), int) or getattr(out, name) < 1:
            raise ValueError(f"search {name}={getattr(out, name)!r} must be an integer >= 1")
    for name, dim in out.space.items():
        if not isinstance(dim, dict) or len(dim) != 1 or next(iter(dim)) not in KINDS:
            raise ValueError(f"search space entry {name}: {dim!r} is not one of "
                             + ", ".join(f"{{{k!r}: ...}}" for k in KINDS))
        kind, arg = next(iter(dim.items()))
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ValueError(f"search space entry {name}: choice needs a non-empty list")
        elif not (isinstance(arg, list) and len(arg) == 2 and arg[0] < arg[1]):
            raise ValueError(f"search space entry {name}: {kind} needs [low, high] with low < high, not {arg!r}")
        if name in ("name", "profile", "preset", "data"):
            raise ValueError(f"search space entry {name}: not a field that changes a run (or the base's preset)")
    # a cheap validity check: each range's ends and each choice, the other entries at their first value
    values = {name: list(next(iter(dim.values()))) for name, dim in out.space.items()}
    first = {name: _encode(vs[0]) for name, vs in values.items()}
    points = {f"{name}-{i}": overrides_of({**first, name: _encode(v)}, out.space)
              for name, vs in values.items() for i, v in enumerate(vs)}
    build_configs({"base": out.base, "points": points}, "smoke")
    return out


def _encode(v: Any) -> Any:
    """Optuna's categorical values are scalars: a dict choice travels as its JSON text."""
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else v


def distributions(space: dict[str, dict]) -> dict:
    """The Optuna distribution of every space entry."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, dim in space.items():
        kind, arg = next(iter(dim.items()))
        if kind == "choice":
            out[name] = CategoricalDistribution([_encode(v) for v in arg])
        else:
            cls, cast = (FloatDistribution, float) if kind.endswith("uniform") else (IntDistribution, int)
            out[name] = cls(cast(arg[0]), cast(arg[1]), log=kind.startswith("log"))
    return out


def overrides_of(params: dict[str, Any], space: dict[str, dict]) -> dict[str, Any]:
    """Config overrides of a trial's parameters (a dict choice is merged in)."""
    out: dict[str, Any] = {}
    for name in space:
        v = params[name]
        out.update(json.loads(v) if isinstance(v, str) and v.startswith("{") else {name: v})
    return out


# ----------------------------------------------------------------------------- storage
def storage_path(profile: str, study: str) -> Path:
    return studies_dir(profile) / f"{study}.optuna.jsonl"


def open_study(profile: str, study: str, s: SearchSpec | None = None):
    """The Optuna study in its journal file; created for a spec, else it must exist (read-only use)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = storage_path(profile, study)
    if s is None and not path.exists():
        raise FileNotFoundError(f"no search {study!r} under {ledger.display_path(path.parent)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    with _quiet_optuna():
        try:        # loading writes nothing (create_study(load_if_exists=True) would append to the journal)
            ostudy = optuna.load_study(study_name=study, storage=storage)
        except KeyError:
            ostudy = optuna.create_study(study_name=study, storage=storage, direction="minimize")
    if s is not None:
        stored = ostudy.user_attrs.get("spec")
        if stored is None:
            ostudy.set_user_attr("spec", s.identity())
        elif stored != s.identity():
            raise ValueError(f"search {study!r} ({ledger.display_path(path)}) was started with another spec: "
                             f"{json.dumps(stored)}; give this one another study name")
    return ostudy


def _sampler(s: SearchSpec, number: int):
    """A sampler seeded for trial `number`: the same trial is asked for after a resume as without one."""
    import optuna

    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed + number)
    return optuna.samplers.TPESampler(seed=s.seed + number, n_startup_trials=s.startup_trials)


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's INFO lines off for a while (the search prints its own), its level restored after."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def median_thresholds(ostudy, startup: int, warmup_steps: int) -> dict[int, float]:
    """Per evaluation step, the median of the completed trials' intermediate losses there (MedianPruner's
    rule); empty (no pruning) while fewer than `startup` trials have completed."""
    from optuna.trial import TrialState

    done = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done or len(done) < startup:
        return {}
    steps = sorted({st for t in done for st in t.intermediate_values if st >= warmup_steps})
    return {st: float(np.nanpercentile(np.array([t.intermediate_values[st] for t in done
                                                 if st in t.intermediate_values], dtype=float), 50.0))
            for st in steps}


# ----------------------------------------------------------------------------- the search
@dataclass
class _Pending:
    number: int
    trial_id: int
    job: Any                         # train.Job
    thresholds: dict[int, float]
    future: Any = None               # a dask future (cluster), or None (here, or already in the ledger)
    summary: dict | None = None      # known without training (from the ledger)


def run_search(spec: dict, profile: str, study: str, progress: bool = True, force: bool = False,
               train: bool = True, cluster=None, threads_per_run: int | None = None,
               runs_per_gpu: int | None = None, timeout: float | None = None,
               on_trial: Callable[[int, dict], None] | None = None,
               on_step: Callable[[Config, int], None] | None = None,
               scheduler_timeout: float | None = None) -> pd.DataFrame:
    """Run (or resume, or read back) a search; record its study; one row per trial told. Trials train here
    (cluster=None) when waited for, or on a Dask cluster from when they are asked.

    train=False asks no new trial and trains nothing: trials left running are told only if their run is in
    the ledger. on_trial(number, summary) is called after each trial is told."""
    import optuna
    from optuna.trial import TrialState

    from .cluster import TIMEOUT, Engine, connect
    from .train import pruner, resolve_job, run

    s = parse(spec)
    ostudy = open_study(profile, study, s)
    dists = distributions(s.space)
    engine = []                                      # the cluster's Engine, once the first trial is sent

    def schedule(ft, resumed: bool = False) -> _Pending:
        """Resolve a trial's run; from the ledger if it is there, else send it to train (when train)."""
        point = {**overrides_of(ft.params, s.space), "name": run_name(profile, study, f"t{ft.number}", None)}
        [(_, cfg)] = build_configs({"base": s.base, "points": {"t": point}}, profile, study)
        job = resolve_job(cfg, local=cluster is None, force=force)
        job.label = f"t{ft.number}"
        trial = optuna.trial.Trial(ostudy, ft._trial_id)
        if "prune_thresholds" in ft.user_attrs:
            thresholds = {int(k): v for k, v in ft.user_attrs["prune_thresholds"].items()}
        else:
            thresholds = median_thresholds(ostudy, s.prune_startup, s.prune_warmup_steps) if s.prune else {}
            trial.set_user_attr("prune_thresholds", {str(k): v for k, v in thresholds.items()})
        if ft.user_attrs.get("hash") != job.hash:
            trial.set_user_attr("hash", job.hash)
        p = _Pending(ft.number, ft._trial_id, job, thresholds)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ft.params.items())
        head = f"[{study} t{ft.number}{' resumed' if resumed else ''}] {shown}"
        if job.done and not force:
            p.summary = job.summary
            print(f"{head} -> in the ledger (run {job.summary['name']}-{job.hash})", flush=True)
        elif not train:
            print(f"{head} -> not in the ledger ({job.summary['status']}); not trained here (train=False)",
                  flush=True)
        else:
            if cluster is not None:
                if not engine:
                    client = stack.enter_context(connect(cluster, runs_per_gpu, scheduler_timeout))
                    engine.append(Engine(client, {}, threads_per_run, runs_per_gpu, force=force, on_step=on_step))
                p.future = engine[0].submit(job, thresholds)
            print(f"{head} -> {'sent to the cluster' if cluster is not None else 'to train here, in turn'} "
                  f"(run {job.hash}" + (f", pruning thresholds at {len(thresholds)} steps" if thresholds else "")
                  + ")", flush=True)
        return p

    def wait(p: _Pending) -> dict:
        """The trial's summary: from the ledger, trained here now, or installed from the cluster."""
        if p.summary is not None:
            return p.summary
        if cluster is None:
            hook = (lambda step: on_step(p.job.cfg, step)) if on_step else None
            return run(p.job.cfg, force=force, progress=progress, on_eval=pruner(p.thresholds), on_step=hook,
                       wait=True)
        return engine[0].collect(p.job, p.future.result(timeout=timeout if timeout is not None else TIMEOUT))

    def tell(p: _Pending, summary: dict) -> None:
        """Report the run's evaluations to its trial and tell Optuna how it ended."""
        trial = optuna.trial.Trial(ostudy, p.trial_id)
        frozen = ostudy.get_trials(deepcopy=False)[p.number]
        if frozen.state.is_finished():
            return
        run_dir = ledger.find_run(ledger.results_root(p.job.cfg.profile), summary["hash"])
        log = run_dir / "log.jsonl" if run_dir else None
        curve = [(int(e["step"]), float(e["loss"])) for e in (ledger.read_log(log) if log and log.exists() else [])
                 if e.get("event") == "validation_step"]
        with _quiet_optuna():
            for step, loss in curve:
                if step not in frozen.intermediate_values and math.isfinite(loss):
                    trial.report(loss, step)
            trial.set_user_attr("run", run_dir.name if run_dir else None)
            trial.set_user_attr("status", summary["status"])
            if summary["status"] == "finished":
                ostudy.tell(p.number, summary["final_val_loss"])
                said = f"official loss {summary['final_val_loss']:.6f}"
            elif summary["status"] == "pruned":
                ostudy.tell(p.number, state=TrialState.PRUNED)
                said = f"pruned at step {summary.get('pruned_step')} (loss {summary.get('last_val_loss')})"
            else:
                ostudy.tell(p.number, state=TrialState.FAIL)
                said = f"{summary['status']} (told FAIL)"
        print(f"    t{p.number} -> {said}, run {summary['name']}-{summary['hash']}", flush=True)

    with contextlib.ExitStack() as stack:
        window: deque[_Pending] = deque()
        try:
            for ft in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                window.append(schedule(ft, resumed=True))
            while True:
                while train and len(window) < s.parallel and len(ostudy.get_trials(deepcopy=False)) < s.trials:
                    ostudy.sampler = _sampler(s, len(ostudy.get_trials(deepcopy=False)))
                    with _quiet_optuna():
                        number = ostudy.ask(dists).number
                    window.append(schedule(ostudy.get_trials(deepcopy=False)[number]))
                if not window:
                    break
                p = window.popleft()
                if p.future is None and p.summary is None and not train:
                    continue                                   # not in the ledger, not trained here
                summary = wait(p)
                tell(p, summary)
                if on_trial is not None:
                    on_trial(p.number, summary)
        finally:
            futures = [p.future for p in window if p.future is not None and not p.future.done()]
            if futures:
                engine[0].client.cancel(futures)
    df = history(profile, study, s, ostudy)
    rows = [{"label": r.label, "axis": "search", "value": r.trial, "seed": r.seed, "hash": r.hash,
             "overrides": r.overrides} for r in df.itertuples() if r.status in ledger.TERMINAL]
    if rows:
        record_study(profile, study, spec, rows)
    return df


# ----------------------------------------------------------------------------- reading a search back
def history(profile: str, study: str, s: SearchSpec | None = None, ostudy=None) -> pd.DataFrame:
    """One row per trial (any state) from the storage and the ledger; trains nothing. Columns: trial, state,
    value, best (best value so far), label, hash, status, the parameters, and the sweep summary columns."""
    ostudy = ostudy or open_study(profile, study)
    space = s.space if s is not None else None
    root = ledger.results_root(profile)
    rows = []
    best = math.inf
    for t in ostudy.get_trials(deepcopy=False):
        if t.value is not None and t.state.name == "COMPLETE":
            best = min(best, t.value)
        h = t.user_attrs.get("hash")
        run_dir = ledger.find_run(root, h) if h else None
        summary = (ledger.read_json(run_dir / "summary.json") if run_dir else None) or {}
        cfg = ledger.read_json(run_dir / "config.json") if run_dir else None
        c = cfg["config"] if cfg else None
        seed = (c["train_seed"] if c.get("train_seed", -1) >= 0 else c["seed"]) if c else None
        overrides = overrides_of(t.params, space) if space else dict(t.params)
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"study": study, "trial": t.number, "state": t.state.name, "value": t.value,
                     "best": best if math.isfinite(best) else None, "last_intermediate": last,
                     "label": f"t{t.number}", "hash": h, "seed": seed, "overrides": overrides,
                     **{f"param_{k}": v for k, v in t.params.items()},
                     **{k: summary.get(k) for k in SUMMARY_COLUMNS}, "pruned_step": summary.get("pruned_step")})
        if not summary:
            rows[-1]["status"] = "missing" if t.state.name != "RUNNING" else "running"
    return pd.DataFrame(rows)


def importances(profile: str, study: str) -> pd.Series:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA) over the completed trials; empty
    with a printed note when there are too few."""
    import optuna

    ostudy = open_study(profile, study)
    try:
        with _quiet_optuna():
            imp = optuna.importance.get_param_importances(ostudy)
    except (ValueError, RuntimeError) as e:
        print(f"no parameter importances yet: {e}")
        return pd.Series(dtype=float, name="importance")
    return pd.Series(imp, name="importance")
