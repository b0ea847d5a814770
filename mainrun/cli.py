"""Command line: the same entry points as the Python API.

    python -m mainrun train --profile full --preset baseline --set optimizer=adamw lr=3e-4
    python -m mainrun eval RUN --data titles.parquet
    python -m mainrun list
    python -m mainrun bench
    python -m mainrun report --profile full
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import PRESETS, PROFILES, ConfigError, make_config, parse_overrides
from .data import DataError


def _find_run_dir(spec: str) -> Path:
    """A run folder given as a path, a folder name, or its hash."""
    from . import ledger

    p = Path(spec)
    if (p / "config.json").exists():
        return p
    for profile in ("full", "smoke"):
        runs = ledger.results_root(profile) / "runs"
        hits = [d for d in runs.glob("*") if d.name == spec or d.name.endswith("-" + spec)]
        if len(hits) == 1:
            return hits[0]
    raise SystemExit(f"error: no run folder, name or hash matches {spec!r}; see `python -m mainrun list`")


def cmd_train(args) -> int:
    from .train import run

    cfg = make_config(args.profile, args.preset, **parse_overrides(args.set or []))
    print(json.dumps(cfg.to_dict()), file=sys.stderr)
    summary = run(cfg, force=args.force, progress=not args.quiet)
    keys = ("name", "hash", "status", "official", "final_val_loss", "full_val_bpc", "steps", "wall_time_s",
            "tokens_per_s")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0 if summary["status"] == "finished" else 3


def cmd_eval(args) -> int:
    import torch

    from . import ledger
    from .config import from_dict
    from .data import encode_titles, read_titles
    from .evaluate import evaluate, full_coverage, official_coverage
    from .train import build_model, resolve_device

    run_dir = _find_run_dir(args.run)
    meta = ledger.read_json(run_dir / "config.json")
    final = ledger.checkpoints_root() / meta["hash"] / "final.pt"
    if not final.exists():
        raise SystemExit(f"error: {final} does not exist: the run has not finished on this machine "
                         f"(final weights live under $MAINRUN_CHECKPOINTS, not in git)")
    ck = torch.load(final, map_location="cpu", weights_only=False)
    cfg = from_dict(ck["config"])
    device = resolve_device(args.device)
    model = build_model(cfg, ck["vocab_size"], ck["eos_id"]).to(device)
    model.load_state_dict(ck["model"])
    titles = read_titles(args.data, args.num_titles)  # file order, no shuffle
    ids, chars = encode_titles(ck["tokenizer_path"], titles)
    out = {"run": run_dir.name, "data": args.data, "titles": len(titles), "tokens": len(ids), "chars": chars,
           "official_loss": evaluate(model, ids, chars, device) if official_coverage(len(ids))[0] else None,
           "official_coverage": official_coverage(len(ids))[1],
           **full_coverage(model, ids, chars, device)}
    print(json.dumps(out, indent=2))
    return 0


def cmd_list(args) -> int:
    from . import ledger

    root = Path(args.results) if args.results else ledger.results_root(args.profile)
    runs = ledger.load_runs(root)
    print(f"{len(runs)} run(s) in {root}")
    print(f"{'run':<44}{'status':>11}{'official':>9}{'val loss':>10}{'full bpc':>10}{'steps':>11}{'wall min':>9}")
    for r in runs:
        s = r["summary"] or {}
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
        steps = f"{s.get('steps', '-')}/{s.get('max_steps', '-')}" if s else "-"
        wall = s.get("wall_time_s") / 60 if s.get("wall_time_s") else None
        print(f"{r['dir'].name:<44}{r['status']:>11}{str(s.get('official', '-')):>9}"
              f"{fmt(s.get('final_val_loss'), '.4f'):>10}{fmt(s.get('full_val_bpc'), '.4f'):>10}{steps:>11}"
              f"{fmt(wall, '.1f'):>9}")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    if args.label is None:
        args.label = args.preset if not args.set else "custom"
    return bench_main(args)


def add_report_command(sub) -> None:
    """`report`: render report/report.qmd to PDF from the analysis outputs (never trains)."""
    def cmd_report(args) -> int:
        from .report import render

        print(f"report: {render(args.profile, args.output, args.engine)}")
        return 0

    r = sub.add_parser("report", help="render the report PDF from the analysis outputs")
    r.add_argument("--profile", default="full", choices=list(PROFILES))
    r.add_argument("--output", type=Path, help="PDF path (default: mainrun/report.pdf for full, "
                                               "<results>/report-PROFILE.pdf otherwise)")
    r.add_argument("--engine", default="auto", choices=("auto", "quarto", "pandoc"))
    r.set_defaults(fn=cmd_report)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mainrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a config (or return its recorded result)")
    t.add_argument("--profile", default="full", choices=list(PROFILES))
    t.add_argument("--preset", default="baseline", choices=list(PRESETS))
    t.add_argument("--set", nargs="*", metavar="NAME=VALUE", help="config overrides")
    t.add_argument("--force", action="store_true", help="train even if the ledger has this run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a finished run's final weights on a titles file")
    e.add_argument("run", help="run folder, folder name or hash")
    e.add_argument("--data", required=True, help="titles file (.parquet/.jsonl/.csv with a 'title' column)")
    e.add_argument("--num-titles", type=int, default=0, help="first N titles of the file (0 = all)")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_eval)
    ls = sub.add_parser("list", help="the runs in a ledger")
    ls.add_argument("--profile", default="full", choices=list(PROFILES), help="smoke lists the temporary ledger")
    ls.add_argument("--results", default=None, help="a ledger folder (default: results/)")
    ls.set_defaults(fn=cmd_list)
    b = sub.add_parser("bench", help="time our training step against the original's, and the matmul ceiling")
    b.add_argument("--profile", default="full", choices=list(PROFILES))
    b.add_argument("--preset", default="baseline", choices=list(PRESETS))
    b.add_argument("--set", nargs="*", metavar="NAME=VALUE", help="config overrides")
    b.add_argument("--reps", type=int, default=3, help="timed steps after one warm-up")
    b.add_argument("--label", default=None, help="name of the JSON under results/bench/")
    b.add_argument("--ops", action="store_true", help="also save torch.profiler's top ops for our step")
    b.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    b.add_argument("--no-reference", action="store_true", help="skip the original-style reference step")
    b.set_defaults(fn=cmd_bench)
    add_report_command(sub)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
