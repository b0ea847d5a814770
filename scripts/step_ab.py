"""Interleaved A/B timing of training-step variants of one preset, in one process.

    python scripts/step_ab.py --preset final --reps 5 eager= attn0=attn_dropout=0 compile=compile=true \
        compile_attn0=compile=true,attn_dropout=0 --out results/bench/cpu-final-ab.json

Each variant is NAME=OVERRIDES (comma-separated NAME=VALUE config overrides, empty for the preset as is).
The variants are built and warmed up first (a compiled one compiles then), then timed round-robin, one
step of each per round, so a slow patch of a shared machine hits every variant alike. Reports the median
s/step per variant and its ratio to the first. Steps on `mainrun bench`'s random batch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import timeit
from datetime import datetime, timezone
from pathlib import Path

import torch

from mainrun.bench import random_batch, train_step
from mainrun.config import make_config, parse_overrides
from mainrun.host import hardware, resolve_execution


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="+", help="NAME=OVERRIDES, e.g. attn0=attn_dropout=0")
    ap.add_argument("--preset", default="final")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    steps, warm, configs = {}, {}, {}
    for v in args.variants:
        name, _, ov = v.partition("=")
        overrides = parse_overrides([s for s in ov.split(",") if s])
        cfg = resolve_execution(make_config("full", args.preset, device="cpu", **overrides))
        configs[name] = overrides
        steps[name] = train_step(cfg, "cpu", cfg.precision, *random_batch(cfg))[0]
        warm[name] = timeit.timeit(steps[name], number=2)
        print(f"{name}: built and warmed up in {warm[name]:.1f} s", flush=True)
    times = {n: [] for n in steps}
    for _ in range(args.reps):
        for n, f in steps.items():
            times[n].append(timeit.timeit(f, number=1))
    first = statistics.median(next(iter(times.values())))
    rows = {n: {"overrides": configs[n], "s_per_step": statistics.median(ts), "times": ts,
                "vs_first": statistics.median(ts) / first, "warmup_s": warm[n]} for n, ts in times.items()}
    for n, r in rows.items():
        print(f"{n:16s} {r['s_per_step']:.3f} s/step  {r['vs_first']:.2f}x of {next(iter(rows))}  "
              f"({', '.join(f'{x:.2f}' for x in r['times'])})")
    if args.out:
        args.out.write_text(json.dumps({"preset": args.preset, "reps": args.reps, "rows": rows,
                                        "host": hardware("cpu"), "threads": torch.get_num_threads(),
                                        "measured_at": datetime.now(timezone.utc).isoformat()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
