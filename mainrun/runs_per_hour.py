"""Runs per hour with several runs sharing a device, measured through the engine: `sweep.run_sweep(...,
cluster=..., runs_per_gpu=K)` (a packing benchmark; not sequence packing).

    python -m mainrun bench --sweep        # the GPU benchmark where torch sees a GPU, else the CPU one

GPU (`gpu_packing`): the `final` preset at full scale in bf16, the same N runs (seeds 1337, 1338, ...) at
K = 1, 2, 4, 8 runs per GPU (K worker processes per GPU, each holding resource GPU=1/K). CPU (`cpu_packing`):
one run at a time with 2 threads against two at once with 1 thread each (quick profile, epic1, 2 seeds).
Per level: runs per hour, and each seed's final loss against the first level beside the spread over seeds
(packing must not change a result by more than the seed noise). Each level trains into its own temporary
ledger and checkpoint folder; starting the cluster, the workers' imports and data are timed apart.
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

from . import ledger

GPU_KS = (1, 2, 4, 8)


def _warm(cfg_dict: dict, sha256: str | None, name: str | None) -> str:
    """On each worker before the clock starts: the imports and the data preparation (caches)."""
    import dataclasses

    from .cluster import cached_data
    from .config import from_dict
    from .data import prepare
    from .train import run  # noqa: F401  (imports torch and the model)

    cfg = from_dict(cfg_dict)
    if sha256:
        cfg = dataclasses.replace(cfg, data=str(cached_data(sha256, name)))
    prepare(cfg)
    return "ok"


def level(profile: str, preset: str, overrides: dict, seeds: list[int], workers: int, threads_per_run: int,
          runs_per_gpu: int | None, gpus: int | None, tag: str, tmp: Path) -> dict:
    """N runs (one per seed) through `run_sweep` on a fresh local cluster, into a temporary ledger; wall time
    of the sweep (from resolving its points to the last result installed)."""
    from distributed import Client

    from .cluster import DataFile, DataPlugin, local_cluster
    from .config import make_config
    from .data import resolve_source
    from .sweep import run_sweep

    load_before = os.getloadavg()[0]           # other jobs on the machine skew every number here
    env = {"MAINRUN_CHECKPOINTS": str(tmp / f"ckpt-{tag}"), "OMP_NUM_THREADS": str(threads_per_run)}
    cfg = make_config(profile, preset, **overrides)
    t0 = time.time()
    cluster = local_cluster(workers, runs_per_gpu=runs_per_gpu, gpus=gpus, env=env)
    try:
        with Client(cluster) as client, ledger.results_override(tmp / f"results-{tag}"):
            client.wait_for_workers(len(cluster.workers), timeout=120)
            data = None if resolve_source(cfg.data) == "hub" else DataFile.read(resolve_source(cfg.data))
            if data:                        # named as the engine names it, so the engine sends it not again
                client.register_plugin(DataPlugin(data), name=f"mainrun-data-{data.sha256}-{data.name}")
            client.run(_warm, cfg.to_dict(), data and data.sha256, data and data.name)
            startup = time.time() - t0
            t1 = time.time()
            df = run_sweep({"base": {"preset": preset, **overrides}, "points": {"run": {}}, "seeds": list(seeds)},
                           profile, f"packing-{tag}", progress=False, cluster=client,
                           threads_per_run=threads_per_run, runs_per_gpu=runs_per_gpu)
            wall = time.time() - t1
            summaries = [ledger.read_json(ledger.find_run(ledger.results_root(profile), h) / "summary.json")
                         for h in df["hash"]]
        n_workers = len(cluster.workers)
    finally:
        cluster.close()
    per_seed = {k: [s.get(k) for s in summaries]
                for k in ("final_val_loss", "train_time_s", "tokens_per_s", "peak_cuda_mem_mb")}
    return {"tag": tag, "workers": n_workers, "runs_per_gpu": runs_per_gpu, "threads_per_run": threads_per_run,
            "runs": len(summaries), "startup_s": startup, "wall_s": wall,
            "runs_per_hour": len(summaries) / wall * 3600,
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
            "statuses": [s["status"] for s in summaries], "seeds": list(seeds), **per_seed}


def compare_losses(levels: list[dict]) -> dict:
    """Each level's per-seed final losses against the first level's, beside the spread over seeds there."""
    ref = levels[0]
    ref_losses = [x for x in ref["final_val_loss"] if x is not None]
    spread = statistics.stdev(ref_losses) if len(ref_losses) > 1 else None
    out = {"reference": ref["tag"], "seed_std_reference": spread, "levels": {}}
    for lv in levels:
        worst = max((abs(a - b) for a, b in zip(lv["final_val_loss"], ref["final_val_loss"])
                     if a is not None and b is not None), default=None)
        losses = [x for x in lv["final_val_loss"] if x is not None]
        within = worst <= spread if worst is not None and spread else None
        out["levels"][lv["tag"]] = {"mean_loss": statistics.fmean(losses) if losses else None,
                                    "max_abs_diff_vs_reference": worst, "within_seed_spread": within}
    return out


def packing(kind: str, levels: list[tuple], n_runs: int, profile: str, preset: str, base: dict, where: str,
            out_dir: Path | None, name: str) -> dict:
    """Each level (workers, threads per run, runs per GPU, GPUs, tag) measured on the same seeds; the JSON."""
    seeds = [1337 + i for i in range(n_runs)]
    with tempfile.TemporaryDirectory(prefix="mainrun-packing-") as tmp:
        done = [level(profile, preset, base, seeds, *lv, Path(tmp)) for lv in levels]
    out = {"kind": kind, "workload": f"{profile} profile, preset {preset}, {n_runs} runs (train_seed "
                                     f"{seeds[0]}..{seeds[-1]}), {where}",
           "host": ledger.hardware("cpu" if base["device"] == "cpu" else "cuda"), "levels": done,
           "losses": compare_losses(done), "measured_at": datetime.now(timezone.utc).isoformat()}
    path = Path(out_dir or ledger.repo_root() / "results" / "bench") / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    out["path"] = ledger.display_path(path)
    return out


def gpu_packing(ks: tuple[int, ...] = GPU_KS, n_runs: int = 8, profile: str = "full", preset: str = "final",
                device: str = "cuda", precision: str = "bf16", gpus: int | None = 1,
                overrides: dict | None = None, out_dir: Path | None = None, name: str = "packing-cuda") -> dict:
    """Runs per hour at K concurrent runs per GPU. device/precision/profile/preset may be changed (the test
    suite runs this very path with smoke runs on the CPU, `device="cpu"`)."""
    base = {"device": device, "precision": precision, "checkpoint_every": 0, **(overrides or {})}
    return packing("gpu", [(k, 1, k, gpus, f"k{k}") for k in ks], n_runs, profile, preset, base,
                   f"device={device}, precision={precision}", out_dir, name)


def cpu_packing(n_runs: int = 2, profile: str = "quick", preset: str = "epic1", overrides: dict | None = None,
                out_dir: Path | None = None, name: str = "packing-cpu") -> dict:
    """1 run x 2 threads (one worker, runs in turn) against 2 runs x 1 thread (two workers, at once)."""
    base = {"device": "cpu", "precision": "fp32", **(overrides or {})}
    return packing("cpu", [(1, 2, None, None, "1x2threads"), (2, 1, None, None, "2x1thread")], n_runs, profile,
                   preset, base, "cpu fp32", out_dir, name)


def format_table(r: dict) -> str:
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = [f"packing benchmark ({r['kind']}): {r['workload']}",
             f"{'level':<12}{'workers':>8}{'threads':>8}{'runs':>6}{'startup s':>10}{'wall s':>9}{'runs/h':>9}"
             f"{'mean loss':>11}{'max |diff|':>11}"]
    for lv in r["levels"]:
        cmp = r["losses"]["levels"][lv["tag"]]
        lines.append(f"{lv['tag']:<12}{lv['workers']:>8}{lv['threads_per_run']:>8}{lv['runs']:>6}"
                     f"{lv['startup_s']:>10.1f}{lv['wall_s']:>9.1f}{lv['runs_per_hour']:>9.1f}"
                     f"{fmt(cmp['mean_loss'], '.5f'):>11}{fmt(cmp['max_abs_diff_vs_reference'], '.2e'):>11}")
    lines.append(f"seed spread (std of the final loss over seeds, {r['losses']['reference']}): "
                 f"{fmt(r['losses']['seed_std_reference'], '.2e')}; JSON: {r['path']}")
    return "\n".join(lines)


def main(args) -> int:
    import torch

    r = gpu_packing() if torch.cuda.is_available() else cpu_packing()
    print(format_table(r))
    return 0
