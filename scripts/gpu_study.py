"""Full-scale studies on a lent GPU, run in one call of the device tool.

    PYTHONPATH=. MAINRUN_DATA=data/hn-stories-2016-2020.parquet \
        python3 scripts/gpu_study.py --budget 380 --out $OUT

Every run is a normal ledger run (full profile: 100k titles, 7 epochs, the 64 x 128 official
evaluation in fp32) with device=cuda and bf16 autocast for training, so its hash differs from the
CPU runs (fp32) and its summary records the GPU. Studies run in priority order; once `--budget`
seconds have passed no new run starts. After every run the GPU runs, study records and bench are
packed into OUT/gpu-results.tar.gz so that a call cut short still brings back what finished.

The studies (overrides on top of the baseline preset):
  gpu_ladder  the seed plan at the original size (27.2M): baseline, epic1, epic2, epic3, beyond,
              each rung the quick proxy's kept configuration (results/studies/quick/ladder.json)
  gpu_small   the beyond recipe on models small enough for a 60-minute 7-epoch run on 2 CPU cores
  gpu_seeds   two more training seeds of the likeliest small configurations
  gpu_lr      the proxy's Epic 3 learning rate checked at full scale (does the ranking hold?)
  gpu_large   the beyond recipe on a larger model (what a GPU buys)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from mainrun import ledger
from mainrun.bench import format_table, run_bench
from mainrun.config import make_config
from mainrun.sweep import build_configs, record_study
from mainrun.train import run

GPU = dict(device="cuda", precision="bf16", checkpoint_every=0)
EPIC1 = dict(optimizer="adamw", lr=3e-4, weight_decay=0.1, schedule="warmup_cosine", warmup_frac=0.05,
             min_lr_frac=0.1)
EPIC2 = {**EPIC1, "pos": "rope", "init": "scaled_residual"}                # quick: RMSNorm did not help
EPIC3 = {**EPIC2, "lr": 2e-3, "weight_decay": 0.05, "dropout": 0.05}      # quick: the joint best
BEYOND = {**EPIC3, "optimizer": "muon", "schedule": "wsd", "qk_norm": True, "attn_mask": "title",
          "tie_embeddings": False}
SMALL = {  # label: shape (head_dim 64)
    "d256-L4-v8k": dict(d_model=256, n_head=4, n_layer=4, vocab_size=8192),
    "d192-L6-v8k": dict(d_model=192, n_head=3, n_layer=6, vocab_size=8192),
    "d256-L3-v8k": dict(d_model=256, n_head=4, n_layer=3, vocab_size=8192),
    "d192-L6-v4k": dict(d_model=192, n_head=3, n_layer=6, vocab_size=4096),
    "d256-L6-v8k": dict(d_model=256, n_head=4, n_layer=6, vocab_size=8192),
    "d192-L4-v16k": dict(d_model=192, n_head=3, n_layer=4, vocab_size=16000),
}


SMALL_BEST = {**BEYOND, "d_model": 192, "n_head": 3, "n_layer": 6, "vocab_size": 4096}  # best of call 1


def studies() -> list[tuple[str, dict]]:
    """(study name, sweep spec) in priority order; call 1 ran the first six, call 2 the rest.

    The reference point of gpu_final and gpu_ablate ("d192-L6-v4k", first) is gpu_small's run of the same
    config (same hash): on a machine whose ledger holds it, it is read back, not trained again."""
    return [
        ("gpu_ladder", {"base": GPU, "points": {"baseline": {}, "epic1": EPIC1, "epic2": EPIC2,
                                                 "epic3": EPIC3, "beyond": BEYOND}}),
        ("gpu_small", {"base": {**GPU, **BEYOND},
                       "points": {k: v for k, v in list(SMALL.items())[:4]}}),
        ("gpu_seeds", {"base": {**GPU, **BEYOND}, "points": {k: SMALL[k] for k in ("d256-L4-v8k", "d192-L6-v8k")},
                       "seeds": [1338, 1339]}),
        ("gpu_lr", {"base": {**GPU, **EPIC3}, "axes": {"lr": [5e-4, 1e-3]}}),
        ("gpu_small", {"base": {**GPU, **BEYOND},
                       "points": {k: v for k, v in list(SMALL.items())[4:]}}),
        ("gpu_large", {"base": {**GPU, **BEYOND},
                       "points": {"d768-L12": dict(d_model=768, n_head=12, n_layer=12)}}),
        # call 2: shapes that fit 60 minutes on 2 CPU cores (bench: d192-L6-v4k without dropout 54.5 min,
        # d192-L4-v4k 46.9, d128-L6-v4k 40.0), the likeliest one's seeds, then single changes
        ("gpu_final", {"base": {**GPU, **SMALL_BEST},
                       "points": {"d192-L6-v4k-drop0": dict(dropout=0.0)}, "seeds": [1337, 1338, 1339]}),
        ("gpu_final", {"base": {**GPU, **SMALL_BEST},
                       "points": {"d192-L6-v4k": {}, "d192-L4-v4k": dict(n_layer=4), "d192-L6-v2k": dict(vocab_size=2048),
                                  "d128-L6-v4k": dict(d_model=128, n_head=2)}}),
        ("gpu_ablate", {"base": {**GPU, **SMALL_BEST},
                        "points": {"d192-L6-v4k": {}, "causal-mask": dict(attn_mask="causal"), "adamw": dict(optimizer="adamw"),
                                   "tied": dict(tie_embeddings=True), "no-qk-norm": dict(qk_norm=False),
                                   "cosine": dict(schedule="warmup_cosine")}}),
    ]


def pack(out: str) -> None:
    """The GPU runs, study records and bench only (never the CPU runs the checkout also holds)."""
    ledger.archive(ledger.results_root("full"), Path(out) / "gpu-results.tar.gz", "full-gpu_*", "full/gpu_*.json",
                   ("bench/cuda-*",))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=380, help="seconds after which no new run starts")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--dry", action="store_true", help="list the runs and their sizes; train nothing")
    ap.add_argument("--studies", nargs="*", default=None, help="only these studies (default: all, in order)")
    args = ap.parse_args()
    if args.dry:
        from mainrun.config import validate
        from mainrun.train import build_model
        for study, spec in studies():
            if args.studies and study not in args.studies:
                continue
            for p, cfg in build_configs(spec, "full", study):
                validate(cfg)
                n = build_model(cfg, cfg.vocab_size, 1).num_params()
                print(f"{study:<11}{p.label:<16}{cfg.rng_seed:>6}{n / 1e6:>7.2f}M  {cfg.run_name}")
        return 0
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if not args.no_bench:
        try:
            r = run_bench(make_config("full", "baseline", device="cuda"), reps=20, label="baseline")
            print(format_table(r), flush=True)
        except Exception:
            traceback.print_exc()
    table = []
    chosen = [x for name in args.studies for x in studies() if x[0] == name] if args.studies else studies()
    for study, spec in chosen:
        rows = []
        for p, cfg in build_configs(spec, "full", study):
            if time.time() - t0 > args.budget:
                print(f"[budget] skipped {study} {p.label} seed={p.seed}", flush=True)
                continue
            t = time.time()
            try:
                s = run(cfg, progress=False)
            except Exception:
                traceback.print_exc()
                print(f"[error] {study} {p.label}", flush=True)
                continue
            rows.append({"label": p.label, "axis": p.axis, "value": p.value, "seed": cfg.rng_seed,
                         "hash": s["hash"], "overrides": p.overrides})
            record_study("full", study, spec, rows)
            line = (f"{study:<11}{p.label:<16}{cfg.rng_seed:>6} {s['status']:<9}"
                    f"{s.get('final_val_loss') or float('nan'):>8.4f}{s.get('full_val_bpc') or float('nan'):>8.4f}"
                    f"{s['n_params'] / 1e6:>7.2f}M{time.time() - t:>7.1f}s")
            table.append(line)
            print(line, flush=True)
            pack(args.out)
    print(f"\nstudy table (official loss, full-coverage bits/char, params, seconds) after {time.time() - t0:.0f}s:")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
