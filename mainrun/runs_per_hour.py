"""Runs per hour through the Dask engine with several runs sharing a device (a packing benchmark; not sequence packing).

    python -m mainrun bench --sweep        # the GPU benchmark where torch sees a GPU, else the CPU one

GPU (`gpu_packing`): the `final` preset at full scale (device=cuda, precision=bf16), the same N runs (training
seeds 1337, 1338, ...) at K = 1, 2, 4, 8 concurrent runs per GPU: a local cluster of K worker processes per
GPU, each holding resource GPU=1/K, fed by `sweep.run_sweep(..., runs_per_gpu=K)`. Reported per K: runs per
hour, and each seed's final loss against K = 1 beside the spread over seeds (packing must not change a
result by more than the seed noise).

CPU (`cpu_packing`): one run at a time with 2 torch threads (1 worker) against two runs at once with 1
thread each (2 workers), on the same N quick-profile points (epic1 preset, training seeds 1337, 1338).

Every level trains into its own temporary ledger and checkpoint folder (nothing read from or written to
the committed ledger); starting the cluster and importing torch on the workers is timed apart from the runs.
JSON to results/bench/packing-<device>.json.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import ledger
from .data import repo_root

GPU_KS = (1, 2, 4, 8)


def _warm(cfg_dict: dict, source: dict) -> str:
    """On each worker before the clock starts: the imports and the data preparation (caches)."""
    import dataclasses

    import torch  # noqa: F401

    from .cluster import cached_data
    from .config import from_dict
    from .data import prepare

    cfg = from_dict(cfg_dict)
    if source.get("kind") != "hub":
        cfg = dataclasses.replace(cfg, data=str(cached_data(source["sha256"], source["name"])))
    prepare(cfg)
    return "ok"


def level(profile: str, preset: str, overrides: dict, seeds: list[int], workers: int, threads_per_run: int,
          runs_per_gpu: int | None, gpus: int | None, tag: str, tmp: Path, timeout: float | None = None) -> dict:
    """N runs (one per seed) through the engine (cluster.run_points: submit, train on the workers, install in
    a temporary ledger) on a fresh local cluster; wall time from submission to the last result installed."""
    from distributed import Client

    from .cluster import DataPlugin, data_files, local_cluster, resolve_job, run_points
    from .studies import build_configs

    load_before = os.getloadavg()[0]           # other jobs on the machine skew every number here
    ckpt = tmp / f"ckpt-{tag}"
    env = {"MAINRUN_CHECKPOINTS": str(ckpt), "OMP_NUM_THREADS": str(threads_per_run)}
    t0 = time.time()
    cluster = local_cluster(workers, runs_per_gpu=runs_per_gpu, gpus=gpus, env=env)
    n_workers = len(cluster.workers)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(n_workers, timeout=120)
            spec = {"base": {"preset": preset, **overrides}, "points": {"run": {}}, "seeds": list(seeds)}
            with ledger.results_override(tmp / f"results-{tag}"):
                pairs = build_configs(spec, profile, f"packing-{tag}")
                jobs = [resolve_job(cfg, label=p.label + f" seed={p.seed}") for p, cfg in pairs]
                data = data_files(jobs)
                for d in data.values():        # named as the engine names it, so the engine sends it not again
                    client.register_plugin(DataPlugin(d), name=f"mainrun-data-{d.sha256}-{d.name}")
                client.run(_warm, jobs[0].cfg.to_dict(), jobs[0].source)
                startup = time.time() - t0
                t1 = time.time()            # from the first submission to the last run installed in the ledger
                summaries = run_points(jobs, client, data, f"packing-{tag}", threads_per_run=threads_per_run,
                                       runs_per_gpu=runs_per_gpu, timeout=timeout)
                wall = time.time() - t1
    finally:
        cluster.close()
    n = len(summaries)
    return {"tag": tag, "workers": n_workers,
            "runs_per_gpu": runs_per_gpu, "threads_per_run": threads_per_run, "runs": n,
            "startup_s": startup, "wall_s": wall, "runs_per_hour": n / wall * 3600,
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
            "statuses": [s["status"] for s in summaries], "seeds": list(seeds),
            "final_val_loss": [s.get("final_val_loss") for s in summaries],
            "train_time_s": [s.get("train_time_s") for s in summaries],
            "tokens_per_s": [s.get("tokens_per_s") for s in summaries],
            "peak_cuda_mem_mb": [s.get("peak_cuda_mem_mb") for s in summaries]}


def compare_losses(levels: list[dict]) -> dict:
    """Each level's per-seed final losses against the first level's, beside the spread over seeds there."""
    ref = levels[0]
    ref_losses = [x for x in ref["final_val_loss"] if x is not None]
    spread = statistics.stdev(ref_losses) if len(ref_losses) > 1 else None
    out = {"reference": ref["tag"], "seed_std_reference": spread, "levels": {}}
    for lv in levels:
        diffs = [a - b for a, b in zip(lv["final_val_loss"], ref["final_val_loss"]) if a is not None and b is not None]
        worst = max((abs(d) for d in diffs), default=None)
        out["levels"][lv["tag"]] = {
            "mean_loss": statistics.fmean([x for x in lv["final_val_loss"] if x is not None])
            if any(x is not None for x in lv["final_val_loss"]) else None,
            "max_abs_diff_vs_reference": worst,
            "within_seed_spread": (worst <= spread) if worst is not None and spread else None}
    return out


def _write(out: dict, out_dir: Path | None, name: str) -> Path:
    out_dir = Path(out_dir) if out_dir else repo_root() / "results" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path


def _host(device: str) -> dict[str, Any]:
    return ledger.hardware(device if device == "cpu" else "cuda")


def gpu_packing(ks: tuple[int, ...] = GPU_KS, n_runs: int = 8, profile: str = "full", preset: str = "final",
                device: str = "cuda", precision: str = "bf16", gpus: int | None = 1,
                overrides: dict | None = None, out_dir: Path | None = None, name: str = "packing-cuda") -> dict:
    """Runs per hour at K concurrent runs per GPU, through the engine. device/precision/profile/preset may be
    changed (the test suite runs this very path with smoke runs on the CPU, `device="cpu"`)."""
    seeds = [1337 + i for i in range(n_runs)]
    base = {"device": device, "precision": precision, "checkpoint_every": 0, **(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="mainrun-packing-") as tmp:
        levels = [level(profile, preset, base, seeds, k, 1, k, gpus, f"k{k}", Path(tmp)) for k in ks]
    out = {"kind": "gpu", "workload": f"{profile} profile, preset {preset}, {n_runs} runs (train_seed "
                                      f"{seeds[0]}..{seeds[-1]}), device={device}, precision={precision}",
           "host": _host(device), "levels": levels, "losses": compare_losses(levels),
           "measured_at": datetime.now(timezone.utc).isoformat()}
    out["path"] = ledger.display_path(_write(out, out_dir, name))
    return out


def cpu_packing(n_runs: int = 2, profile: str = "quick", preset: str = "epic1", overrides: dict | None = None,
                out_dir: Path | None = None, name: str = "packing-cpu") -> dict:
    """1 run x 2 threads (one worker, runs in turn) against 2 runs x 1 thread (two workers, at once)."""
    seeds = [1337 + i for i in range(n_runs)]
    base = {"device": "cpu", "precision": "fp32", **(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="mainrun-packing-") as tmp:
        levels = [level(profile, preset, base, seeds, 1, 2, None, None, "1x2threads", Path(tmp)),
                  level(profile, preset, base, seeds, 2, 1, None, None, "2x1thread", Path(tmp))]
    out = {"kind": "cpu", "workload": f"{profile} profile, preset {preset}, {n_runs} runs (train_seed "
                                      f"{seeds[0]}..{seeds[-1]}), cpu fp32",
           "host": _host("cpu"), "levels": levels, "losses": compare_losses(levels),
           "measured_at": datetime.now(timezone.utc).isoformat()}
    out["path"] = ledger.display_path(_write(out, out_dir, name))
    return out


def format_table(r: dict) -> str:
    lines = [f"packing benchmark ({r['kind']}): {r['workload']}",
             f"{'level':<12}{'workers':>8}{'threads':>8}{'runs':>6}{'startup s':>10}{'wall s':>9}{'runs/h':>9}"
             f"{'mean loss':>11}{'max |diff|':>11}"]
    for lv in r["levels"]:
        cmp = r["losses"]["levels"][lv["tag"]]
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"{lv['tag']:<12}{lv['workers']:>8}{lv['threads_per_run']:>8}{lv['runs']:>6}"
                     f"{lv['startup_s']:>10.1f}{lv['wall_s']:>9.1f}{lv['runs_per_hour']:>9.1f}"
                     f"{fmt(cmp['mean_loss'], '.5f'):>11}{fmt(cmp['max_abs_diff_vs_reference'], '.2e'):>11}")
    spread = r["losses"]["seed_std_reference"]
    lines.append(f"seed spread (std of the final loss over seeds, {r['losses']['reference']}): "
                 + (f"{spread:.2e}" if spread is not None else "-") + f"; JSON: {r['path']}")
    return "\n".join(lines)


def main(args) -> int:
    import torch

    r = gpu_packing() if torch.cuda.is_available() else cpu_packing()
    print(format_table(r))
    return 0
