"""Issue 14's full-scale screen on a lent GPU, in one call of the device tool.

    PYTHONPATH=.:/tmp/site MAINRUN_DATA=data/hn-stories-2016-2020.parquet \
        python3 scripts/gpu_search.py --budget 480 --workers 8 --out $OUT

Every run is a normal ledger run: full profile (100k titles, 7 epochs, the official 64 x 128 evaluation in fp32),
device=cuda with bf16 autocast, so its hash is its own and its summary records the GPU. `--workers` runs share
the GPU at once (each a process with 1 CPU thread: a 4M-parameter model leaves an H100 mostly idle).

1. bench: the `final` preset's training step on this GPU (results/bench/cuda-final-bf16.json; issue 13).
2. gpu14_seeds: the final preset over three training seeds, and the same with attn_dropout=0 (the CPU speed
   knob of issue 13, whose loss effect has to be shown over seeds before it can become a default).
3. gpu14_screen: one change at a time against the final preset (seed 1337), in priority order, until the time
   left is what the stack needs.
4. gpu14_stack: the changes that beat the final preset's seed mean by more than twice its seed spread (at least
   0.001), the best of each kind, stacked; three seeds of the stack, and the stack without each member.
   Shape changes (layers, width) are screened but never stacked: they change the CPU cost.
5. Test sets (issue 14), read once, after every selection was made on the validation loss: the GPU baseline
   (retrained in a scratch ledger; its official loss is checked against the committed run's), the final
   preset's three seeds and the stack's three seeds, on test:random and test:late (results/test/).

What finished is packed into OUT/gpu-search.tar.gz after every run, so a call cut short still returns it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from mainrun.proxy import SCREEN   # one change each against the final preset, most promising first

GPU = dict(device="cuda", precision="bf16", checkpoint_every=0)
BASE = {"preset": "final", **GPU}
PROFILE = "full"                           # --local: smoke on the CPU, to try the script here
SEEDS = (1338, 1339)                       # besides the config's own seed, 1337
THREADS = 1

SEED_POINTS = {"final": {}, **{f"final-s{s}": {"train_seed": s} for s in SEEDS},
               "attn0": {"attn_dropout": 0.0}, **{f"attn0-s{s}": {"attn_dropout": 0.0, "train_seed": s} for s in SEEDS}}

NOT_STACKED = {"n_layer", "d_model", "n_head"}


def train_one(cfg_dict: dict) -> dict:
    """A worker: one run into the ledger; its summary (or the error)."""
    import torch

    torch.set_num_threads(THREADS)
    from mainrun.config import from_dict
    from mainrun.train import run
    try:
        return run(from_dict(cfg_dict), progress=False)
    except Exception:
        return {"status": "error", "error": traceback.format_exc(), "name": cfg_dict.get("name")}


def pack(out: Path, rerun: Path) -> None:
    from mainrun import ledger
    ledger.archive(ledger.results_root(PROFILE), out / "gpu-search.tar.gz", f"{PROFILE}-gpu14_*", f"{PROFILE}/gpu14_*.json",
                   ("bench/cuda-*", "test/*.json"))
    if (rerun / "runs").exists():
        ledger.archive(rerun, out / "gpu-rerun.tar.gz", "*")


class Pool:
    """Jobs (study, label, overrides) on `workers` processes; rows recorded into their study as they finish."""

    def __init__(self, workers: int, out: Path, rerun: Path):
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        self.workers, self.out, self.rerun = workers, out, rerun
        self.running: dict = {}
        self.done: dict[tuple[str, str], dict] = {}
        self.durations: list[float] = []
        self.specs: dict[str, dict] = {}

    def plan(self, study: str, base: dict, points: dict) -> None:
        """Name a study's whole spec up front, so its record carries one spec rather than one per submission."""
        self.specs[study] = {"base": base, "points": dict(points)}

    def submit(self, study: str, label: str, overrides: dict, base: dict | None = None) -> None:
        from mainrun.sweep import _row, build_configs, record_study
        if study in self.specs and base is not None and base != self.specs[study]["base"]:
            raise ValueError(f"study {study} was planned with base {self.specs[study]['base']}, not {base}")
        base = self.specs[study]["base"] if study in self.specs else (base or BASE)
        spec = {"base": base, "points": {label: overrides}}
        (p, cfg), = build_configs(spec, PROFILE, study)
        self.specs.setdefault(study, {"base": base, "points": {}})["points"][label] = overrides
        from mainrun.train import run
        held = run(cfg, train=False)
        if held.get("status") in ("finished", "diverged", "pruned"):
            self.done[(study, label)] = held
            record_study(PROFILE, study, self.specs[study], [_row(study, p, cfg, held)])
            print(f"{study:<13}{label:<16} {held['status']:<9}{held.get('final_val_loss') or float('nan'):>8.4f} "
                  f"(from the ledger)", flush=True)
            return
        fut = self.ex.submit(train_one, cfg.to_dict())
        self.running[fut] = (study, label, p, cfg, time.time())

    def free(self) -> int:
        return self.workers - len(self.running)

    def collect(self) -> None:
        from mainrun.sweep import _row, record_study
        if not self.running:
            return
        done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        for fut in done:
            study, label, p, cfg, t0 = self.running.pop(fut)
            s = fut.result()
            dt = time.time() - t0
            if s.get("status") == "error":
                print(f"[error] {study} {label}\n{s['error']}", flush=True)
                continue
            self.durations.append(dt)
            self.done[(study, label)] = s
            row = _row(study, p, cfg, s)
            record_study(PROFILE, study, self.specs[study], [row])
            print(f"{study:<13}{label:<16} {s['status']:<9}{s.get('final_val_loss') or float('nan'):>8.4f}"
                  f"{s.get('full_val_bpc') or float('nan'):>8.4f}{s['n_params'] / 1e6:>6.2f}M{dt:>6.0f}s "
                  f"(in flight {len(self.running)})", flush=True)
            pack(self.out, self.rerun)

    def drain(self) -> None:
        while self.running:
            self.collect()

    def loss(self, study: str, label: str) -> float | None:
        s = self.done.get((study, label))
        return s.get("final_val_loss") if s and s.get("status") == "finished" else None


def choose_stack(pool: Pool, ref_study: str = "gpu14_seeds", ref_labels: tuple[str, ...] = ("final",
                 *[f"final-s{s}" for s in SEEDS]), study: str = "gpu14_screen", points: dict | None = None
                 ) -> tuple[dict, list[tuple[str, float, dict]], float, float]:
    """(stacked overrides, its members (label, delta, overrides) best first, reference mean, threshold): the
    points of `study` that beat the reference runs' mean by more than twice their spread (at least 0.001),
    one value per knob, shape changes left out. No finished reference: nothing stacked."""
    points = SCREEN if points is None else points
    ref = [v for v in (pool.loss(ref_study, k) for k in ref_labels) if v]
    if not ref:
        return {}, [], float("nan"), float("nan")
    mean = statistics.mean(ref)
    sd = statistics.stdev(ref) if len(ref) > 1 else 0.0
    threshold = max(2 * sd, 0.001)
    helped = sorted((pool.loss(study, k) - mean, k, ov) for k, ov in points.items()
                    if pool.loss(study, k) is not None and pool.loss(study, k) - mean < -threshold)
    stack: dict = {}
    members = []
    for delta, label, ov in helped:           # best first; one value per knob, shape changes left out
        if set(ov) & (set(stack) | NOT_STACKED):
            continue
        stack.update(ov)
        members.append((label, delta, ov))
    return stack, members, mean, threshold


def test_evals(pool: Pool, rerun: Path) -> None:
    """The held-out test sets, once: GPU baseline (scratch ledger), final seeds, stack seeds."""
    from mainrun import cli, ledger
    from mainrun.config import make_config
    from mainrun.train import run
    root = ledger.results_root(PROFILE)
    (root / "test").mkdir(parents=True, exist_ok=True)
    targets = []
    with ledger.results_override(rerun):
        s = run(make_config(PROFILE, "baseline", name=f"{PROFILE}-gpu_ladder-baseline", **GPU), progress=False)
        print(f"baseline retrained on this GPU: official {s['final_val_loss']:.6f} (hash {s['hash']})", flush=True)
        base_dir = ledger.find_run(rerun, s["hash"])
        for kind in ("random", "late"):
            cli.main(["eval", str(base_dir), "--data", f"test:{kind}", "--save", "--device", GPU["device"]])
        for f in (rerun / "test").glob("*.json"):
            shutil.copy(f, root / "test" / f.name)
    for study, labels in (("gpu14_seeds", ("final", "final-s1338", "final-s1339")),
                          ("gpu14_stack", ("stack", "stack-s1338", "stack-s1339"))):
        for label in labels:
            s = pool.done.get((study, label))
            if s and s.get("status") == "finished":
                targets.append(ledger.find_run(root, s["hash"]))
    for d in targets:
        for kind in ("random", "late"):
            try:
                cli.main(["eval", str(d), "--data", f"test:{kind}", "--save", "--device", GPU["device"]])
            except BaseException:
                traceback.print_exc()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole script")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--screen", type=int, default=len(SCREEN), help="at most this many screen points")
    ap.add_argument("--test-reserve", type=float, default=45, help="seconds kept for the test-set evaluation")
    ap.add_argument("--local", action="store_true", help="smoke profile on the CPU (try the script; no GPU)")
    args = ap.parse_args()
    if args.local:
        global PROFILE
        PROFILE = "smoke"
        GPU.update(device="cpu", precision="fp32")
        BASE.update(GPU, d_model=32, n_head=2, n_layer=1, vocab_size=512)
    t0 = time.time()
    out, rerun = Path(args.out), Path("/tmp/mainrun-rerun")
    out.mkdir(parents=True, exist_ok=True)
    from mainrun.config import make_config
    from mainrun.data import prepare
    from mainrun.testset import test_file
    prepare(make_config(PROFILE, "final", **GPU))          # the shared tokenizer and ids, once, before the workers
    for kind in ("random", "late"):
        test_file(kind)
    if not args.no_bench:
        try:
            from mainrun.bench import format_table, run_bench
            r = run_bench(make_config(PROFILE, "final", **GPU), reps=10, label="final-bf16")
            print(format_table(r), flush=True)
        except Exception:
            traceback.print_exc()
    print(f"[{time.time() - t0:.0f}s] set up; training with {args.workers} runs on the GPU at once", flush=True)
    pool = Pool(args.workers, out, rerun)
    queue = [("gpu14_seeds", k, v) for k, v in SEED_POINTS.items()]
    queue += [("gpu14_screen", k, v) for k, v in list(SCREEN.items())[:args.screen]]
    stack_round = None

    def left() -> float:
        return args.budget - (time.time() - t0)

    def typical() -> float:
        return statistics.median(pool.durations) if pool.durations else 135.0

    while queue:
        # one round for what is in flight, one for the stack, and the test sets must still fit
        if left() < 2 * typical() + args.test_reserve:
            print(f"[{time.time() - t0:.0f}s] screen stopped: {len(queue)} point(s) not started "
                  f"({', '.join(k for _, k, _ in queue)})", flush=True)
            break
        while queue and pool.free() > 0:
            pool.submit(*queue.pop(0))
        pool.collect()
    pool.drain()
    stack, members, mean, threshold = choose_stack(pool)
    print(f"[{time.time() - t0:.0f}s] reference (final, {len(SEEDS) + 1} seeds) {mean:.4f}; helped by more than "
          f"{threshold:.4f}: {[(m[0], round(m[1], 4)) for m in members]}", flush=True)
    if stack and left() > typical() + args.test_reserve:
        stack_round = {"stack": stack, **{f"stack-s{s}": {**stack, "train_seed": s} for s in SEEDS}}
        if len(members) > 1:
            for label, _, ov in members[:args.workers - 3]:
                stack_round[f"stack-minus-{label}"] = {k: v for k, v in stack.items() if k not in ov}
        for k, v in stack_round.items():
            pool.submit("gpu14_stack", k, v)
        while queue and pool.free() > 0:       # free slots in the same round: more of the screen
            pool.submit(*queue.pop(0))
        pool.drain()
    pool.ex.shutdown()
    try:
        test_evals(pool, rerun)
    except BaseException:
        traceback.print_exc()
    pack(out, rerun)
    print(f"\n[{time.time() - t0:.0f}s] done: {len(pool.done)} runs; median {typical():.0f}s a run with "
          f"{args.workers} at once", flush=True)
    json.dump({"stack": stack, "members": members, "reference_mean": mean, "threshold": threshold,
               "durations_s": pool.durations, "workers": args.workers},
              open(out / "gpu-search-summary.json", "w"), indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
