"""One call of a lent accelerator: record specs through the Dask engine, then (optionally) a stack of what
beat a reference, then the runs packed for the trip back. Generic: which round it is lives in the specs.

    python scripts/device_call.py records/<round>/<study>.yaml [more.yaml ...] --runs-per-gpu 8 --out $OUT \
        [--stack REFERENCE --stack-seeds 1338 1339 --keep-out n_layer d_model n_head vocab_size]

Each spec goes through `python -m mainrun sweep` (the same CLI as here) with K runs sharing each GPU: a local
Dask cluster of K worker processes per GPU, each task holding GPU=1/K (`run_sweep(..., runs_per_gpu=K)`).
With --stack, once the last spec's points have come back from the engine, the points that beat REFERENCE's
seed mean by more than 2 seed standard deviations (at least 0.001; `stats.choose_stack`, one value a knob,
the --keep-out knobs never stacked) are stacked and trained over REFERENCE's seed and the --stack-seeds as
study <study>_stack. Everything trained is packed into OUT/ledger.tgz (`ledger.archive`); `tar xzf` under
results/ brings it home.

The lent machine has torch but not dask, distributed, optuna or datasets: carry them as wheels
(`pip download dask distributed optuna datasets -d .whl` here, then `pip install --no-index --find-links .whl
...` there). --local tries the whole call at the smoke profile on the CPU, with --workers processes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mainrun import cli, ledger  # noqa: E402
from mainrun.stats import choose_stack  # noqa: E402
from mainrun.sweep import run_sweep  # noqa: E402
from mainrun.tables import load_results, read_studies, study_frame  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", type=Path, help="record specs (YAML), run in order")
    ap.add_argument("--runs-per-gpu", type=int, default=8, help="K runs sharing each GPU (default 8)")
    ap.add_argument("--out", type=Path, required=True, help="folder for ledger.tgz (the device tool's $OUT)")
    ap.add_argument("--stack", metavar="REFERENCE", help="stack the last spec's points that beat this label")
    ap.add_argument("--stack-seeds", type=int, nargs="*", default=[1338, 1339], help="extra seeds of the stack")
    ap.add_argument("--keep-out", nargs="*", default=["n_layer", "d_model", "n_head", "vocab_size", "ensemble"],
                    help="knobs never stacked (they change the cost)")
    ap.add_argument("--local", action="store_true", help="smoke profile on the CPU, to try the call")
    ap.add_argument("--workers", type=int, default=2, help="worker processes with --local (default 2)")
    args = ap.parse_args(argv)
    for f in args.specs:
        if not f.is_file():
            ap.error(f"spec {f} does not exist")
    if args.runs_per_gpu < 1:
        ap.error(f"--runs-per-gpu must be at least 1 (got {args.runs_per_gpu})")
    t0 = time.time()
    last = args.specs[-1]
    spec = yaml.safe_load(last.read_text())
    profile = "smoke" if args.local else spec.get("profile", "quick")
    root = ledger.results_root(profile)
    before = {p.name for p in (root / "runs").glob("*")}
    where = ["--profile", "smoke", "--workers", str(args.workers)] if args.local else [
        "--runs-per-gpu", str(args.runs_per_gpu)]
    for f in args.specs:
        rc = cli.main(["sweep", str(f), "--quiet", *where])
        print(f"[{time.time() - t0:.0f}s] {f}: rc {rc}", flush=True)
    studies = [f.stem for f in args.specs]
    if args.stack:
        frame = study_frame(read_studies(profile)[last.stem], load_results(profile))
        stack, members, threshold = choose_stack(frame, args.stack, keep_out=frozenset(args.keep_out))
        print(f"stack over {args.stack} (threshold {threshold:.4f}): "
              + (", ".join(f"{m} {d:+.4f}" for m, d in members) or "nothing beat it"), flush=True)
        if stack:
            base = dict((spec.get("specs") or [spec])[-1].get("base", {}))
            study = f"{last.stem}_stack"
            points = {"stack": stack, **{f"stack-s{s}": {**stack, "train_seed": s} for s in args.stack_seeds}}
            run_sweep({"base": base, "points": points}, profile, study, progress=False,
                      cluster=args.workers if args.local else 1,
                      runs_per_gpu=None if args.local else args.runs_per_gpu)
            studies.append(study)
    args.out.mkdir(parents=True, exist_ok=True)
    new = [f"runs/{p.name}" for p in sorted((root / "runs").glob("*"))
           if p.name not in before and (p / "summary.json").exists()]
    records = [f"studies/{profile}/{s}.json" for s in studies
               if (root / "studies" / profile / f"{s}.json").exists()]
    # only what this call trained (finished runs) and the studies it wrote
    paths = ledger.archive(root, args.out / "ledger.tgz", "<none>", None, tuple(new + records))
    print(f"[{time.time() - t0:.0f}s] packed {len(paths)} ledger paths into {args.out / 'ledger.tgz'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
