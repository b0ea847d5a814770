"""Issue 14's second full-scale screen and the full-data proxy, on a lent GPU, in one call of the device tool.

    PYTHONPATH=.:scripts:/tmp/site MAINRUN_DATA=data/hn-stories-2016-2020.parquet \
        python3 scripts/gpu_screen2.py --budget 555 --workers 14 --out $OUT     # then again with --third
        python3 scripts/gpu_screen2.py --budget 480 --workers 14 --fourth --out $OUT   # the fourth screen
        python3 scripts/gpu_screen2.py --workers 14 --fifth --out $OUT                 # the fifth screen

Same machinery as scripts/gpu_search.py (its Pool: `--workers` ledger runs share the GPU, full profile, bf16,
each packed into OUT/gpu-search.tar.gz as it finishes), three studies, in this order:

1. gpu14_screen2: one change each against `final2` (proxy.SCREEN2: value embeddings, U-net skips, the 1-sqrt
   cooldown, z-loss, stochastic depth, EMA, Muon without Nesterov or with 3 Newton-Schulz steps, a tied head,
   dropout 0 and 0.03, embedding LR 0.02). Its reference is final2's three seeds, already in the ledger.
2. gpu14_stack2: once the screen is in, the changes that beat final2's seed mean by more than twice its seed
   spread (at least 0.001), one value per knob, stacked on final2; three seeds, and the stack without each
   member. Test sets read once for the stack's seeds.
3. gpu14_mirror (fills the free slots): the full-data small-model proxy (proxy.MIRROR_SPEC: d64 x 2 layers,
   100k titles, 4k vocabulary), the quick mirror's 15 changes on the final recipe, to be set against the first
   GPU screen (proxy.agreement).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_search as gs  # noqa: E402

from mainrun.proxy import (MIRROR_SPEC, MIRROR_STUDY, SCREEN2, SCREEN2_REF_SEEDS, SCREEN2_SPEC,  # noqa: E402
                           SCREEN3_SPEC, SCREEN4, SCREEN4_SPEC, SCREEN5_SPEC)

SCREEN, STACK = "gpu14_screen2", "gpu14_stack2"


def with_exec(base: dict) -> dict:
    return {**base, **gs.GPU}


def choose_stack(pool: gs.Pool) -> tuple[dict, list, float, float]:
    """gpu_search.choose_stack over the second screen, against final2's seeds."""
    return gs.choose_stack(pool, SCREEN, ("final2", *[f"final2-s{s}" for s in SCREEN2_REF_SEEDS]), SCREEN, SCREEN2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole script")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--local", action="store_true", help="smoke profile on the CPU (try the script; no GPU)")
    ap.add_argument("--only", type=int, default=0, help="at most this many points per study (0 = all)")
    ap.add_argument("--third", action="store_true",
                    help="the third screen instead (proxy.SCREEN3 against the second screen's stack, study "
                         "gpu14_screen3): one round, no stack, no mirror")
    ap.add_argument("--fourth", action="store_true",
                    help="the fourth screen instead (proxy.SCREEN4 against the same stack, study gpu14_screen4), "
                         "then two more seeds for its best two points while the budget lasts")
    ap.add_argument("--fifth", action="store_true",
                    help="the fifth screen instead (proxy.SCREEN5 against preset final4, study gpu14_screen5): "
                         "one round, every point (the ensembles first)")
    args = ap.parse_args()
    if args.local:
        gs.PROFILE = "smoke"
        gs.GPU.update(device="cpu", precision="fp32")
    t0 = time.time()
    out, rerun = Path(args.out), Path("/tmp/mainrun-rerun")
    out.mkdir(parents=True, exist_ok=True)
    from mainrun.config import make_config
    from mainrun.data import prepare
    from mainrun.testset import test_file
    shrink = dict(d_model=32, n_head=2, n_layer=1, vocab_size=512) if args.local else {}
    screen_base = {**with_exec(SCREEN2_SPEC["base"]), **shrink}
    mirror_base = {**with_exec(MIRROR_SPEC["base"]), **shrink}
    pick = (lambda pts: dict(list(pts.items())[:args.only])) if args.only else (lambda pts: pts)  # noqa: E731
    screen_points, mirror_points = pick(SCREEN2_SPEC["points"]), pick(MIRROR_SPEC["points"])
    prepare(make_config(gs.PROFILE, "final2", **gs.GPU, **shrink))   # tokenizer and ids, once, before the workers
    for kind in ("random", "late"):
        test_file(kind)
    print(f"[{time.time() - t0:.0f}s] set up; {args.workers} runs on the GPU at once", flush=True)
    pool = gs.Pool(args.workers, out, rerun)
    if args.fourth:
        return fourth(pool, {**with_exec(SCREEN4_SPEC["base"]), **shrink}, pick(SCREEN4_SPEC["points"]), out, rerun,
                      args.budget, t0)
    if args.third or args.fifth:
        study, spec = ("gpu14_screen3", SCREEN3_SPEC) if args.third else ("gpu14_screen5", SCREEN5_SPEC)
        one_base, one_points = {**with_exec(spec["base"]), **shrink}, pick(spec["points"])
        pool.plan(study, one_base, one_points)
        for k, v in one_points.items():
            pool.submit(study, k, v)
        pool.drain()
        pool.ex.shutdown()
        gs.pack(out, rerun)
        print(f"\n[{time.time() - t0:.0f}s] done: {len(pool.done)} runs", flush=True)
        return 0
    pool.plan(SCREEN, screen_base, screen_points)
    pool.plan(MIRROR_STUDY, mirror_base, mirror_points)
    queue = [(SCREEN, k, v) for k, v in screen_points.items()] + [(MIRROR_STUDY, k, v) for k, v in mirror_points.items()]
    stacked = None

    def left() -> float:
        return args.budget - (time.time() - t0)

    def typical() -> float:
        return statistics.median(pool.durations) if pool.durations else 150.0

    while queue or pool.running or stacked is None:   # the stack is decided once the screen is in
        screen_open = any(r[0] == SCREEN for r in pool.running.values()) or any(s == SCREEN for s, _, _ in queue)
        if stacked is None and not screen_open:
            stack, members, mean, threshold = choose_stack(pool)
            stacked = {"stack": stack, "members": members, "reference_mean": mean, "threshold": threshold}
            print(f"[{time.time() - t0:.0f}s] reference (final2, 3 seeds) {mean:.4f}; helped by more than "
                  f"{threshold:.4f}: {[(m[0], round(m[1], 4)) for m in members]}", flush=True)
            if stack:
                points = {"stack": stack, **{f"stack-s{s}": {**stack, "train_seed": s} for s in SCREEN2_REF_SEEDS}}
                if len(members) > 1:
                    for label, _, ov in members:
                        points[f"stack-minus-{label}"] = {k: v for k, v in stack.items() if k not in ov}
                pool.plan(STACK, screen_base, points)
                queue = [(STACK, k, v) for k, v in points.items()] + queue
        if queue and left() > typical() + 20:
            while queue and pool.free() > 0:
                pool.submit(*queue.pop(0))
        elif queue:
            print(f"[{time.time() - t0:.0f}s] stopped: {len(queue)} point(s) not started "
                  f"({', '.join(f'{s}:{k}' for s, k, _ in queue)})", flush=True)
            queue = []
        pool.collect()
    pool.ex.shutdown()
    from mainrun import cli, ledger
    root = ledger.results_root(gs.PROFILE)
    for label in ("stack", *[f"stack-s{s}" for s in SCREEN2_REF_SEEDS]):
        s = pool.done.get((STACK, label))
        if s and s.get("status") == "finished":
            for kind in ("random", "late"):
                try:
                    cli.main(["eval", str(ledger.find_run(root, s["hash"])), "--data", f"test:{kind}", "--save",
                              "--device", gs.GPU["device"]])
                except BaseException:
                    traceback.print_exc()
    gs.pack(out, rerun)
    print(f"\n[{time.time() - t0:.0f}s] done: {len(pool.done)} runs; median {typical():.0f}s a run with "
          f"{args.workers} at once", flush=True)
    json.dump({**(stacked or {}), "durations_s": pool.durations, "workers": args.workers},
              open(out / "gpu-screen2-summary.json", "w"), indent=1, default=str)
    return 0


def fourth(pool: gs.Pool, base: dict, points: dict, out: Path, rerun: Path, budget: float, t0: float) -> int:
    """Screen 4 in one round; then seeds 1338 and 1339 for the (at most two) points that beat the stack's seed
    mean by more than twice its spread (at least 0.001), if a typical run still fits the budget."""
    study = "gpu14_screen4"
    pool.plan(study, base, points)
    for k, v in points.items():
        pool.submit(study, k, v)
    pool.drain()
    singles = {k: v for k, v in SCREEN4.items() if "train_seed" not in v}
    _, _, mean, threshold = gs.choose_stack(pool, study, ("stack", *[f"stack-s{s}" for s in SCREEN2_REF_SEEDS]),
                                                  study, singles)
    ranked = sorted((pool.loss(study, k) - mean, k) for k in singles if pool.loss(study, k) is not None)
    best = [k for d, k in ranked if d < -threshold and f"{k}-s{SCREEN2_REF_SEEDS[0]}" not in points][:2]
    print(f"[{time.time() - t0:.0f}s] stack {mean:.4f} (threshold {threshold:.4f}); best "
          f"{[(k, round(d, 4)) for d, k in ranked[:5]]}; more seeds for {best}", flush=True)
    typical = statistics.median(pool.durations) if pool.durations else 150.0
    if best and budget - (time.time() - t0) > typical + 20:
        for k in best:
            for s in SCREEN2_REF_SEEDS:
                pool.submit(study, f"{k}-s{s}", {**singles[k], "train_seed": s})
        pool.drain()
    elif best:
        print(f"[{time.time() - t0:.0f}s] no time left for more seeds of {best}", flush=True)
    pool.ex.shutdown()
    gs.pack(out, rerun)
    print(f"\n[{time.time() - t0:.0f}s] done: {len(pool.done)} runs; median {typical:.0f}s a run", flush=True)
    json.dump({"best": best, "ranked": ranked, "reference_mean": mean, "threshold": threshold,
               "durations_s": pool.durations}, open(out / "gpu-screen4-summary.json", "w"), indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
