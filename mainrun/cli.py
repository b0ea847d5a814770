"""Command line: the same entry points as the Python API.

    python -m mainrun train --profile full --preset baseline --set optimizer=adamw lr=3e-4
    python -m mainrun eval RUN --data titles.parquet
    python -m mainrun list
    python -m mainrun repair RUN
    python -m mainrun bench
    python -m mainrun sweep spec.yaml --profile quick --study lr --workers 2
    python -m mainrun report --profile full
    python -m mainrun export final --into CHECKOUT      (or --out DIR: a Mainrun submission)
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from . import ledger
from .config import PROFILES, ConfigError, make_config, parse_overrides
from .data import DataError
from .presets import PRESETS


def _find_run_dir(spec: str) -> Path:
    """A run folder in any profile's ledger: by its folder's path, else as ledger.match_run finds it."""
    p = Path(spec).expanduser()
    if (p / "config.json").exists():
        return p
    roots = list(dict.fromkeys(ledger.results_root(profile) for profile in PROFILES))
    try:
        return ledger.match_run(spec, [r for root in roots for r in ledger.load_runs(root)],
                                ", ".join(str(Path(r).resolve()) for r in roots))["dir"]
    except ledger.NoSuchRun as e:
        raise SystemExit(f"error: {e}\na run may also be named by its folder's path; list the runs with "
                         f"`python -m mainrun list` (add `--profile smoke` for smoke runs)") from None


def cmd_train(args) -> int:
    from .train import run

    cfg = make_config(args.profile, args.preset, **parse_overrides(args.set or []))
    print(json.dumps(cfg.to_dict()), file=sys.stderr)
    summary = run(cfg, force=args.force, progress=not args.quiet, discard_finished=args.discard_finished,
                  restart=args.restart)
    keys = ("name", "hash", "status", "official", "final_val_loss", "full_val_bpc", "steps", "wall_time_s",
            "tokens_per_s")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0 if summary["status"] == "finished" else 3


def cmd_eval(args) -> int:
    import torch

    from .config import recorded_config
    from .data import encode_titles, read_titles
    from .evaluate import evaluate, full_coverage, official_coverage
    from .host import resolve_device
    from .train import build_model, load_saved

    run_dir = _find_run_dir(args.run)
    meta = ledger.read_json(run_dir / "config.json")
    final = ledger.checkpoints_root() / meta["hash"] / "final.pt"
    if not final.exists():
        raise SystemExit(f"error: {final} does not exist: the run has not finished on this machine "
                         f"(final weights live under $MAINRUN_CHECKPOINTS, not in git)")
    ck = load_saved(final, f"train the run again with `python -m mainrun train ... --force` to remake its weights")
    cfg = recorded_config(ck["config"])
    device = resolve_device(args.device)
    model = build_model(cfg, ck["vocab_size"], ck["eos_id"]).to(device)
    model.load_state_dict(ck["model"])
    data, test = args.data, None
    if data.startswith("test:"):            # a held-out test set, built from the corpus (mainrun/testset.py)
        from .testset import test_file
        data, test = test_file(data.split(":", 1)[1])
    if data == "val":                       # the run's own validation split: its official loss, recomputed
        from .data import fingerprint, load_titles
        if fingerprint(cfg)[0] != meta["data_fingerprint"]:
            raise DataError(f"--data val: the data at hand ({cfg.data or 'MAINRUN_DATA'}) does not give run "
                            f"{run_dir.name}'s split; set MAINRUN_DATA to the file it was trained on")
        titles = load_titles(cfg.data, cfg.num_titles, cfg.seed, cfg.val_frac)[1][:args.num_titles or None]
    else:
        titles = read_titles(data, args.num_titles)  # file order, no shuffle
    ids, chars = encode_titles(ck["tokenizer_path"], titles)
    if not any(titles) or len(ids) < 2:     # a loss of no tokens reads 0.0; of blank titles, of separators only
        raise DataError(f"{data} holds {f'no text to score ({len(titles)} blank titles)' if titles else 'no titles'}"
                        f": no loss is computed from no data; give a titles file with text")
    out = {"run": run_dir.name, "hash": meta["hash"],
           "data": args.data if test or data == "val" else ledger.display_path(data),
           **({"test": test} if test else {}), "titles": len(titles), "tokens": len(ids), "chars": chars,
           "official_loss": evaluate(model, ids, chars, device) if official_coverage(len(ids))[0] else None,
           "official_coverage": official_coverage(len(ids))[1],
           **full_coverage(model, ids, chars, device), "device": device, "torch_version": torch.__version__}
    print(json.dumps(out, indent=2))
    if args.save:                           # beside the run's ledger: results/test/<run>-test-<set>.json
        name = test["test_set"] if test else Path(data).stem
        path = run_dir.parent.parent / "test" / f"{run_dir.name}-test-{name}.json"
        ledger.atomic_write_json(path, out)
        print(f"saved {ledger.display_path(path)}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    root = Path(args.results) if args.results else ledger.results_root(args.profile)
    runs = ledger.load_runs(root)
    print(f"{len(runs)} run(s) in {Path(root).resolve()}")
    print(f"{'run':<44}{'status':>11}{'official':>9}{'val loss':>10}{'full bpc':>10}{'steps':>11}{'wall min':>9}")
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
    for r in runs:
        s = r["summary"] or {}
        steps = f"{s.get('steps', '-')}/{s.get('max_steps', '-')}" if s else "-"
        wall = s.get("wall_time_s") / 60 if s.get("wall_time_s") else None
        print(f"{r['dir'].name:<44}{r['status']:>11}{str(s.get('official', '-')):>9}"
              f"{fmt(s.get('final_val_loss'), '.4f'):>10}{fmt(s.get('full_val_bpc'), '.4f'):>10}{steps:>11}"
              f"{fmt(wall, '.1f'):>9}")
    for r in runs:
        if r["status"] == "damaged":
            print(f"damaged: {r['damaged']}")
        final = ledger.checkpoints_root() / str(r["hash"]) / "final.pt"
        if r["status"] == "finished" and final.exists() and not ledger.zip_intact(final):
            print(f"damaged: {final}: its final weights do not load (`eval` needs them); train the run again with "
                  f"--force to remake them (its recorded result stands)")
    return 0


def cmd_repair(args) -> int:
    """Rebuild a run's summary.json from its log, or check an intact one against it (ledger.repair)."""
    ok, report = ledger.repair(_find_run_dir(args.run))
    print(report)
    return 0 if ok else 1


def cmd_bench(args) -> int:
    from .bench import main

    return main(args)


def cmd_report(args) -> int:
    """Render report/report.qmd to PDF from the analysis outputs (never trains). Its sources are the checkout's
    report/ (a wheel ships none): without them, one line says so."""
    from .report import render, report_dir

    if not (report_dir() / "report.qmd").exists():
        raise FileNotFoundError(f"{report_dir() / 'report.qmd'} does not exist: the report renders from a checkout "
                                f"of mainrun (report/, with the analysis its notebooks write); run this command in "
                                f"one, or set MAINRUN_ROOT to one")
    print(f"report: {render(args.profile, args.output, args.engine)}")
    return 0


def cmd_sweep(args) -> int:
    """A sweep or search spec run here or on the Dask engine; the driver writes the ledger and study record."""
    import time

    import pandas as pd

    from .sweep import load_spec_file, run_sweep, studies_dir

    named, calls = load_spec_file(Path(args.spec))
    if named and args.profile and named != args.profile:
        raise ValueError(f"{args.spec} names profile {named!r}; --profile {args.profile} would ask for other runs "
                         f"(leave --profile out, or pass --profile {named})")
    args.profile = args.profile or named or "quick"
    args.study = args.study or Path(args.spec).stem
    t0 = time.time()
    df = pd.concat([run_sweep(call, args.profile, args.study, progress=not args.quiet, force=args.force,
                              cluster=args.scheduler or args.workers or (1 if args.runs_per_gpu else None),
                              threads_per_run=args.threads_per_run, runs_per_gpu=args.runs_per_gpu,
                              scheduler_timeout=args.scheduler_timeout)
                    for call in calls], ignore_index=True)
    cols = [c for c in ("label", "seed", "hash", "status", "final_val_loss", "full_val_bpc", "wall_time_s")
            if c in df.columns]
    with pd.option_context("display.width", 200):
        print(df[cols].to_string(index=False))
    print(f"{len(df)} point(s) in {time.time() - t0:.0f}s; study record: "
          f"{ledger.shown_path(studies_dir(args.profile) / f'{args.study}.json')}")
    return 0 if len(df) and df["status"].isin(["finished", "pruned"]).all() else 3


def _checked(convert, ok, wanted: str):
    """An argparse type: convert(text) when ok(value, text), else an error naming the text (argparse names
    the flag)."""
    def check(text: str):
        try:
            v = convert(text)
        except ValueError:
            v = None
        if v is None or not ok(v, text):
            raise argparse.ArgumentTypeError(f"{text!r} is not accepted: give {wanted}")
        return v
    return check


# --workers, --threads-per-run, --runs-per-gpu; --scheduler-timeout
at_least_one = _checked(int, lambda v, text: v >= 1 and str(v) == text.strip(), "an integer >= 1")
at_least_zero = _checked(int, lambda v, text: v >= 0 and str(v) == text.strip(), "an integer >= 0")  # --num-titles
seconds = _checked(float, lambda v, text: v > 0, "a number of seconds > 0")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mainrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    config = argparse.ArgumentParser(add_help=False)           # train builds a config so (bench: unset = its own)
    config.add_argument("--profile", default="full", choices=list(PROFILES))
    config.add_argument("--preset", default="baseline", choices=list(PRESETS))
    config.add_argument("--set", nargs="*", metavar="NAME=VALUE", help="config overrides")
    run = argparse.ArgumentParser(add_help=False)              # eval and repair find a run the same way
    run.add_argument("run", help="the run: its name (as trained: --set name=..., else profile-preset), folder "
                                 "name <name>-<hash>, hash or a unique hash prefix, or its folder's path")
    t = sub.add_parser("train", parents=[config], help="train a config (or return its recorded result)")
    t.add_argument("--force", action="store_true", help="train even if the ledger has this run")
    t.add_argument("--discard-finished", action="store_true",
                   help="with --force: start over even a run whose summary is damaged or missing while its log "
                        "shows it finished (otherwise refused: `repair` rebuilds the summary)")
    t.add_argument("--restart", action="store_true", help="start an unfinished run over from step 0, discarding "
                   "its checkpoint and log (a damaged ckpt.pt); a finished run is returned as without it")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", parents=[run], help="evaluate a finished run's final weights on a titles file")
    e.add_argument("--data", required=True, help="titles file (.parquet/.jsonl/.csv with a 'title' column), "
                   "test:random / test:late, the held-out test sets (mainrun/testset.py), or val, the run's own "
                   "validation split (its official_loss is the run's recorded final_val_loss)")
    e.add_argument("--save", action="store_true",
                   help="also write the result to <results>/test/<run>-test-<set>.json")
    e.add_argument("--num-titles", type=at_least_zero, default=0, help="first N titles of the file (0 = all)")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_eval)
    ls = sub.add_parser("list", help="the runs in a ledger")
    ls.add_argument("--profile", default="full", choices=list(PROFILES), help="smoke lists the temporary ledger")
    ls.add_argument("--results", default=None, help="a ledger folder (default: results/)")
    ls.set_defaults(fn=cmd_list)
    sub.add_parser("repair", parents=[run], help="rebuild a run's damaged or missing summary.json from its "
                                                  "complete log").set_defaults(fn=cmd_repair)
    b = sub.add_parser("bench", help="time our training step against the original's, and the matmul ceiling")
    b.add_argument("--profile", default=None, choices=list(PROFILES), help="default: full (--sweep: its own)")
    b.add_argument("--preset", default=None, choices=list(PRESETS), help="default: baseline (--sweep: its own)")
    b.add_argument("--set", nargs="*", metavar="NAME=VALUE", help="config overrides")
    b.add_argument("--reps", type=int, default=3, help="timed steps after one warm-up")
    b.add_argument("--label", default=None, help="name of the JSON under results/bench/")
    b.add_argument("--out", type=Path, default=None, metavar="DIR", help="write the JSON into DIR (default: "
                   "results/bench/ of the checkout; under --profile smoke, bench/ of the smoke ledger)")
    b.add_argument("--ops", action="store_true", help="also save torch.profiler's top ops for our step")
    b.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    b.add_argument("--no-reference", action="store_true", help="skip the original-style reference step")
    b.add_argument("--against", default="d3709e8", metavar="REF",
                   help="also time the step of the code at git commit REF (the preset that stood there), "
                        "alternating with this code's, each in its own process; 'none' skips it")
    b.add_argument("--no-parts", action="store_true", help="skip the breakdown of the step into its parts")
    b.add_argument("--sweep", action="store_true", help="packing benchmark through the Dask engine instead: runs "
                   "per hour with K runs per GPU, or 1 run x 2 threads against 2 runs x 1 thread on the CPU "
                   "(mainrun.bench: gpu_packing, cpu_packing)")
    b.set_defaults(fn=cmd_bench)
    r = sub.add_parser("report", help="render the report PDF from the analysis outputs")
    r.add_argument("--profile", default="full", choices=list(PROFILES))
    r.add_argument("--output", type=Path, help="PDF path (default: mainrun/report.pdf for full, "
                                               "<results>/report-PROFILE.pdf otherwise)")
    r.add_argument("--engine", default="auto", choices=("auto", "quarto", "pandoc"))
    r.set_defaults(fn=cmd_report)
    s = sub.add_parser("sweep", help="run a sweep or search spec (YAML/JSON) here or on a Dask cluster")
    s.add_argument("spec", help="YAML or JSON file: a sweep spec (base, points, axes, grid, seeds) or a search "
                                "spec (search, base); see README, Scale out. A record (records/) may add "
                                "'profile' and list several calls' specs under 'specs'")
    s.add_argument("--profile", default=None, choices=list(PROFILES),
                   help="default: the spec's 'profile', else quick")
    s.add_argument("--study", default=None,
                   help="study name: results/studies/<profile>/<study>.json (default: the spec file's stem)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--workers", type=at_least_one, default=None,
                       help="a local Dask cluster of N worker processes (neither option: sequential, in-process)")
    where.add_argument("--scheduler", default=None, help="address of a running `dask scheduler`, tcp://HOST:8786")
    s.add_argument("--scheduler-timeout", type=seconds, default=30.0, metavar="S",
                   help="seconds to wait for the --scheduler to answer, then for its first worker (default 30)")
    s.add_argument("--threads-per-run", type=at_least_one, default=None,
                   help="torch threads of each run (default 1)")
    s.add_argument("--runs-per-gpu", type=at_least_one, default=None,
                   help="K runs share a GPU: each task asks for resource GPU=1/K; with no --scheduler, a local "
                   "cluster of K worker processes per GPU (--workers is then ignored)")
    s.add_argument("--force", action="store_true", help="train even the points the ledger has")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(fn=cmd_sweep)
    from .export import add_export_command
    add_export_command(sub)
    for parser in (p, *sub.choices.values()):      # before or after the command: `train --debug`
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the traceback of an error (to report a bug in mainrun)")
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("interrupted: nothing half-written is kept; a run resumes from its last checkpoint when started "
              "again", file=sys.stderr)
        return 130
    except (ConfigError, DataError, RuntimeError, ValueError, TimeoutError, OSError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


# what to do about an environment fault, by errno (after the path and the system's reason)
_ELSEWHERE = "point MAINRUN_RESULTS / MAINRUN_CHECKPOINTS at a folder you can write"
_OS_ADVICE = {errno.ENOSPC: "free space there, or point MAINRUN_RESULTS / MAINRUN_CHECKPOINTS at another disk, "
                            "and run it again (a run resumes from its last checkpoint)",
              errno.EDQUOT: "free space there, and run it again (a run resumes from its last checkpoint)",
              errno.EROFS: _ELSEWHERE, errno.EACCES: _ELSEWHERE, errno.EPERM: _ELSEWHERE}


def one_line(err: BaseException) -> str:
    """A user error or an environment fault as one line; an OSError names its path, why, and what to do."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        advice = _OS_ADVICE.get(err.errno, "")
        return f"{where}{err.strerror}" + (f"; {advice}" if advice else "")
    return str(err)
