"""The study runner: every point of a spec trained (or read back from the ledger) here, one after another, or on
the Dask engine (`mainrun.cluster`); the driver writes the ledger and the study record either way. A spec with a
"search" key is an Optuna search (`mainrun.search`); `load_spec_file` reads either from YAML or JSON and checks
its shape. Specs, study records and the choices made over a study's
table are in `mainrun.studies` (re-exported here under their old names)."""
from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from . import ledger
from .config import PROFILES, Config, cli_command
from .studies import (EXECUTION, STUDY_PROFILE, SUMMARY_COLUMNS, Point, accum_axis, best_row,  # noqa: F401
                      build_configs, by_point, check_shape, combine, expand, finished, helpful, joint_best,
                      mark_stage, read_ladder, record_study, row, stage_overrides, studies_dir, widen)


def run_sweep(spec: dict, profile: str, study: str, progress: bool = True, force: bool = False,
              train: bool = True, cluster=None, threads_per_run: int | None = None,
              runs_per_gpu: int | None = None, scheduler_timeout: float | None = None) -> pd.DataFrame:
    """Run (or read back) every point of `spec`; record the study; one row per point. cluster: None (here, in
    turn), a number of local Dask workers, a scheduler address (waited for scheduler_timeout s, see
    cluster.connect) or a Client; a sweep whose points are all in the ledger starts none. train=False reads the
    ledger only (unfinished points: "missing" or "incomplete", not recorded). A point another process is
    training is waited for and read back."""
    check_engine_args(cluster, threads_per_run, runs_per_gpu)
    if "search" in spec:
        from .search import run_search
        return run_search(spec, profile, study, progress=progress, force=force, train=train, cluster=cluster,
                          threads_per_run=threads_per_run, runs_per_gpu=runs_per_gpu,
                          scheduler_timeout=scheduler_timeout)
    pairs = build_configs(spec, profile, study)
    if cluster is None:
        rows = [_run_here(study, i, len(pairs), p, cfg, force, progress, train)
                for i, (p, cfg) in enumerate(pairs, 1)]
    else:
        from .cluster import connect, data_files, run_points
        from .train import resolve_job
        jobs = [resolve_job(cfg, label=p.label + (f" seed={p.seed}" if p.seed is not None else ""), force=force)
                for p, cfg in pairs]
        todo = [j for j in jobs if force or not j.done] if train else []
        data = data_files(todo)            # read before anything is sent: the driver's file may go away
        with connect(cluster, runs_per_gpu, scheduler_timeout) if todo else contextlib.nullcontext() as client:
            summaries = run_points(jobs, client, data, study, force, train, threads_per_run, runs_per_gpu)
        rows = [_row(study, p, cfg, summary) for (p, cfg), summary in zip(pairs, summaries)]
    recorded = [r for r in rows if r["status"] in ledger.TERMINAL]
    if recorded:
        record_study(profile, study, spec, recorded)
    return pd.DataFrame(rows)


def load_spec_file(path: Path) -> tuple[str | None, list[dict]]:
    """A spec file (YAML, or JSON): (the profile it names or None, the specs of its calls). A record
    (records/<round>/<study>.yaml) may name its profile and list the specs of several calls under `specs`."""
    import yaml

    expected = "a YAML or JSON mapping with the keys base, points, axes, grid, seeds (a sweep) or search, base"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"spec file {path}: {e.strerror or e}; give the path of {expected}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"spec file {path}: not text (byte {e.start}: {e.reason}); expected {expected}") from None
    try:
        spec = yaml.safe_load(text)                      # YAML, or JSON (a subset of YAML)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"spec file {path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); "
                         f"expected {expected}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"spec file {path}: holds a {type(spec).__name__}; expected {expected}")
    named = spec.pop("profile", None)
    if named is not None and named not in PROFILES:
        raise ValueError(f"{path}: profile {named!r} is not accepted; choose one of: {', '.join(PROFILES)}")
    calls = [spec]
    if "specs" in spec:
        calls = spec.pop("specs")
        if spec or not isinstance(calls, list) or not calls or not all(isinstance(c, dict) for c in calls):
            raise ValueError(f"{path}: 'specs' is a non-empty list of sweep specs, beside 'profile' only "
                             f"(other keys: {', '.join(spec) or 'none'})")
    from .search import parse                       # every call's shape, before any runs
    for i, call in enumerate(calls):
        try:
            parse(call) if "search" in call else check_shape(call)
        except (ValueError, TypeError) as e:
            raise ValueError(f"spec file {path}{f' (specs[{i}])' if len(calls) > 1 else ''}: {e}") from None
    return named, calls


def check_engine_args(cluster, threads_per_run: int | None, runs_per_gpu: int | None) -> None:
    """Refuse, before anything starts, what would train nothing or hang: a number of workers, threads per run
    or runs per GPU below 1 (the CLI names its flags: --workers, --threads-per-run, --runs-per-gpu)."""
    if isinstance(cluster, bool) or (isinstance(cluster, int) and cluster < 1):
        raise ValueError(f"cluster={cluster!r}: give a number of workers >= 1, a scheduler address or a dask "
                         f"Client (None trains here, one point after another)")
    for name, v in (("threads_per_run", threads_per_run), ("runs_per_gpu", runs_per_gpu)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}={v!r}: give an integer >= 1 (or None for the default)")


def _run_here(study: str, i: int, n: int, p: Point, cfg: Config, force: bool, progress: bool, train: bool) -> dict:
    """One point trained (or read back) in this process; its row."""
    from .train import run

    started = datetime.now(timezone.utc).isoformat()
    t0 = time.time()
    print(f"[{study} {i}/{n}] {p.label}" + (f" seed={p.seed}" if p.seed is not None else ""), flush=True)
    summary = run(cfg, force=force, progress=progress, train=train, wait=True)
    reused = (summary.get("finished_at") or "") < started
    if summary["status"] in ("missing", "incomplete"):
        print("    -> not finished in this ledger"
              + (f" (step {summary['last_step']} of {summary['max_steps']})" if summary["status"] == "incomplete"
                 else "") + "; not trained here (train=False). To train it (and resume it if it has a "
              f"checkpoint): {cli_command(cfg)}", flush=True)
    else:
        print(f"    -> official loss {summary.get('final_val_loss')!s:.8} "
              f"({'from the ledger' if reused else f'trained in {time.time() - t0:.0f}s'}), "
              f"run {summary['name']}-{summary['hash']}", flush=True)
    return _row(study, p, cfg, summary)


def _row(study: str, p: Point, cfg: Config, summary: dict) -> dict:
    return {"study": study, "label": p.label, "axis": p.axis, "value": p.value, "seed": cfg.rng_seed,
            "hash": summary["hash"], "overrides": p.overrides, **{k: summary.get(k) for k in SUMMARY_COLUMNS}}


# ----------------------------------------------------------------------------- records
def confirm(profile: str, before: str, changes: dict[str, Any], study: str, fallback_preset: str,
            train: bool = True, cluster=None) -> pd.DataFrame:
    """Run the ladder stage `before` and `before` + `changes` at `profile` (the kept proxy result at full
    scale); one row each, the first being the stage before (usually read back from the ledger)."""
    base = stage_overrides(profile, before, fallback_preset)
    return run_sweep({"base": base, "points": {before: {}, "kept": dict(changes)}}, profile, study, train=train,
                     cluster=cluster)


def extend_edges(df: pd.DataFrame, base: dict, profile: str, study: str, axis: str = "lr",
                 rounds: int = 2, progress: bool = True, cluster=None) -> pd.DataFrame:
    """While the best value of `axis` sits on the edge of its grid, run one value beyond it."""
    for _ in range(rounds):
        pts = by_point(df[df["axis"] == axis])
        more = widen(list(pts["value"]), pts.loc[pts["loss_mean"].idxmin(), "value"])
        if not more:
            break
        print(f"best {axis} is on the edge of the grid: adding {more}")
        df = pd.concat([df, run_sweep({"base": base, "axes": {axis: more}}, profile, study, progress,
                                      cluster=cluster)], ignore_index=True)
    return df
