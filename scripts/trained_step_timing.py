"""Does a trained model step slower than a fresh one? Times forward + backward of a finished run's final weights
against the same config freshly initialised, with and without torch.set_flush_denormal, and counts denormal
values among the MLP activations of one block. Written to look for why `full-14_final2-final2` ran 10-12%
slower than `final` after its first 300 steps (README, "Past the final configuration").

    .venv/bin/python scripts/trained_step_timing.py RUN_HASH [--threads 2] [--reps 4]

Needs the run's final weights on this machine ($MAINRUN_CHECKPOINTS/<hash>/final.pt); prints the median step of
each case (s) and the fractions of exact zeros and denormals among the activations.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mainrun import ledger
from mainrun.config import from_dict
from mainrun.train import build_model


def step_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    _, loss = model(x, x)
    loss.backward()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_hash")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--block", type=int, default=2, help="the block whose MLP activations are counted")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = torch.load(ledger.checkpoints_root() / args.run_hash / "final.pt", map_location="cpu", weights_only=False)
    cfg = from_dict(ck["config"])
    trained = build_model(cfg, ck["vocab_size"], ck["eos_id"])
    trained.load_state_dict(ck["model"])
    fresh = build_model(cfg, ck["vocab_size"], ck["eos_id"])
    x = torch.randint(0, ck["vocab_size"], (cfg.batch_size, cfg.block_size))
    for name, model in (("trained", trained.train()), ("fresh", fresh.train())):
        for flush in (False, True, False, True):       # alternated, so a drifting machine shows as a spread
            torch.set_flush_denormal(flush)
            step_time(model, x)                         # warm-up
            t = statistics.median(step_time(model, x) for _ in range(args.reps))
            print(f"{name:<8} {'flush_denormal' if flush else 'plain':<15} {t:.3f} s")
    torch.set_flush_denormal(False)
    seen = {}
    hook = trained.blocks[args.block].mlp.out.register_forward_hook(lambda m, inp, out: seen.update(a=inp[0]))
    with torch.no_grad():
        trained.eval()(x)
    hook.remove()
    a = seen["a"]
    tiny = (a != 0) & (a.abs() < torch.finfo(a.dtype).tiny)
    print(f"block {args.block} MLP activations: zero {float((a == 0).float().mean()):.3f}, "
          f"denormal {float(tiny.float().mean()):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
