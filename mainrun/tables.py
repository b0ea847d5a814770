"""The ledger as tables: queries of stored results only (run folders and their logs, study records, the
ladder, test-set readings). Nothing here trains, judges or writes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import ledger
from .config import Config, make_config
from .formats import is_nan, plain
from .studies import read_ladder, studies_dir


SUMMARY_FIELDS = ("status", "official", "final_val_loss", "full_val_bpc", "full_val_loss", "official_coverage",
                  "n_params", "wall_time_s", "tokens_per_s", "steps", "max_steps", "val_tokens", "val_chars",
                  "precision", "started_at", "train_time_s")


def _device_and_progress(r: dict) -> dict[str, Any]:
    """The device a run trained on, and for an unfinished run how far its log got."""
    s = r["summary"] or {}
    device = (s.get("hardware") or {}).get("device")
    out: dict[str, Any] = {}
    if device is None or s.get("status") is None:
        out = ledger.log_progress(Path(r["dir"]) / "log.jsonl")
        device = device or out.pop("device")
    return {"device": device or r["config"].get("device"), **out}


def load_results(profile: str) -> pd.DataFrame:
    """One row per run of `profile`: metrics, config fields, and the ratio to the finished baseline of the same
    kind of device (another device's while it has none, flagged `ratio_provisional`)."""
    rows = []
    for r in ledger.load_runs(ledger.results_root(profile)):
        cfg = r["config"]
        if cfg.get("profile") != profile:
            continue
        s = r["summary"] or {}
        row = {"run": r["dir"].name.rsplit("-", 1)[0], "hash": r["hash"], "dir": str(r["dir"]),
               **{k: s.get(k) for k in SUMMARY_FIELDS}, "status": r["status"],
               "hardware": hardware_text(s.get("hardware"))}
        row.update({k: v for k, v in _device_and_progress(r).items() if v is not None or k not in row})
        row.update(without_pauses(row, r["dir"]) if r["status"] == "finished" else {"paused_s": 0.0})
        row.update({k: v for k, v in cfg.items() if k not in row and k != "name"})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    refs: dict[str, tuple[str, float]] = {}
    for dev in df["device"].dropna().unique():
        if base := baseline_hash(df[df["device"] == dev], profile):
            refs[dev] = (base, df.loc[df["hash"] == base, "final_val_loss"].iloc[0])
    fallback = refs.get("cpu") or next(iter(refs.values()), None)
    df = df.assign(ratio_to_baseline=float("nan"), ratio_reference=None, ratio_provisional=False)
    for dev in df["device"].unique():
        ref = refs.get(dev) or fallback
        if ref is None:
            continue
        mask = df["device"] == dev
        df.loc[mask, "ratio_to_baseline"] = df.loc[mask, "final_val_loss"] / ref[1]
        df.loc[mask, "ratio_reference"] = ref[0]
        df.loc[mask, "ratio_provisional"] = dev not in refs
    df["is_baseline"] = df["hash"].isin({h for h, _ in refs.values()})
    return df


def without_pauses(row: dict, run_dir: Path) -> dict[str, Any]:
    """Wall time and tokens/s of the time a run was running (see `pauses`); the raw figures kept beside."""
    p = pauses(run_dir)
    out: dict[str, Any] = {"paused_s": float(p["wall_s"].sum())}
    wall, tps, train = row.get("wall_time_s"), row.get("tokens_per_s"), row.get("train_time_s")
    if out["paused_s"] <= 0 or wall is None or is_nan(wall):
        return out
    out.update(wall_time_raw_s=wall, tokens_per_s_raw=tps, wall_time_s=wall - out["paused_s"])
    paused_train = float(p["train_s"].sum())
    if tps is not None and not is_nan(tps) and train and not is_nan(train) and train - paused_train > 0:
        out["tokens_per_s"] = tps * train / (train - paused_train)
    return out


def hardware_text(hw: dict | None) -> str | None:
    """A run's machine in words: processor, device, cores, torch threads and version."""
    if not hw:
        return None
    text = f"{hw.get('gpu') or hw.get('cpu')} ({hw.get('device')}, {hw.get('cpu_count')} CPU cores"
    return text + f", {hw.get('torch_threads')} torch threads, torch {hw.get('torch_version')})"


def _is_baseline(row: pd.Series, profile: str) -> bool:
    """Whether a run's config is the `baseline` preset of this profile (any precision, the default seed)."""
    ref = make_config(profile, "baseline", device="cpu", precision="fp32").hash_fields()
    ref.pop("precision")
    ref.pop("device", None)
    extra_seed = row.get("train_seed") not in (None, -1) and not is_nan(row.get("train_seed"))
    return all(row.get(k) == v for k, v in ref.items()) and not extra_seed


def baseline_hash(df: pd.DataFrame, profile: str) -> str | None:
    """The finished run whose config is the `baseline` preset of this profile (any precision)."""
    done = df[df["status"] == "finished"].sort_values("started_at")
    return next((row["hash"] for _, row in done.iterrows() if _is_baseline(row, profile)), None)


def pending_baseline(results: pd.DataFrame, device: str) -> dict[str, Any] | None:
    """The unfinished baseline run on `device` (the one a provisional ratio waits for), if any."""
    cand = results[(results["device"] == device) & (results["status"] != "finished")]
    for _, r in cand.iterrows():
        if _is_baseline(r, r["profile"]):
            ints = ("last_step", "max_steps", "last_val_step")
            steps = {k: None if plain(r.get(k)) is None else int(r[k]) for k in ints}
            return {"run": r["run"], "hash": r["hash"], **steps, "last_val_loss": plain(r.get("last_val_loss"))}
    return None


def log_events(run_dir: str | Path, event: str) -> list[dict]:
    """A run's logged events of one kind, in order."""
    return [e for e in ledger.read_log(Path(run_dir) / "log.jsonl") if e.get("event") == event]


PAUSE_GAP_S = 600.0   # no training step or evaluation of these runs takes 10 minutes


def pauses(run_dir: str | Path) -> pd.DataFrame:
    """Stretches a run's process spent stopped (SIGSTOP, so that other runs had the cores), from its log: one
    row per pause with `step` (the step it followed), `wall_s` (elapsed time it adds) and `train_s` (the part
    inside a training step). A step or an evaluation over PAUSE_GAP_S counts as paused beyond the run's median
    one; time between sessions is not in the elapsed times, so only a live pause shows."""
    has_log = (Path(run_dir) / "log.jsonl").exists()
    steps = [e for e in log_events(run_dir, "training_step") if "elapsed_time" in e] if has_log else []
    evals = {e["step"]: e for e in log_events(run_dir, "validation_step") if "timestamp" in e} if has_log else {}
    rows: list[dict[str, Any]] = []
    if len(steps) < 3:
        return pd.DataFrame(rows, columns=["step", "wall_s", "train_s"])
    # an evaluation's duration: from its step's training event to its own event (wall-clock stamps)
    eval_s = {a["step"]: evals[a["step"]]["timestamp"] - a["timestamp"]
              for a in steps if a["step"] in evals and "timestamp" in a}
    gaps = [(a, b["elapsed_time"] - a["elapsed_time"]) for a, b in zip(steps, steps[1:])]
    typical_step = float(np.median([g - eval_s.get(a["step"], 0.0) for a, g in gaps]))
    typical_eval = float(np.median(list(eval_s.values()))) if eval_s else 0.0
    for a, g in gaps:
        in_eval = eval_s.get(a["step"], 0.0)
        in_step = g - in_eval
        eval_pause = in_eval - typical_eval if in_eval > PAUSE_GAP_S else 0.0
        step_pause = in_step - typical_step if in_step > PAUSE_GAP_S else 0.0
        if eval_pause > 0 or step_pause > 0:
            rows.append({"step": a["step"], "wall_s": eval_pause + step_pause, "train_s": step_pause})
    return pd.DataFrame(rows, columns=["step", "wall_s", "train_s"])


def read_curve(run_dir: str | Path, train: bool = False) -> pd.DataFrame:
    """A run's validation events (or with train=True its training steps): step, loss, running seconds, tokens."""
    run_dir = Path(run_dir)
    cfg = ledger.read_json(run_dir / "config.json")["config"]
    per_step = cfg["batch_size"] * cfg["grad_accum"] * cfg["block_size"]
    ev = log_events(run_dir, "training_step" if train else "validation_step")
    df = pd.DataFrame(ev, columns=["step", "loss", "elapsed_time"])
    df["tokens"] = df["step"] * per_step
    # running time: a stretch the process spent stopped before an evaluation is left out
    p = pauses(run_dir)
    df["elapsed_time"] = df["elapsed_time"] - [p.loc[p["step"] < st, "wall_s"].sum() for st in df["step"]]
    return df


def read_stability(run_dir: str | Path) -> pd.DataFrame:
    """A run's stability events (train.STABILITY_EVERY): step, gradient norm before clipping, and per
    parameter group grad_<group> and ratio_<group> (update/weight); empty for runs older than the events."""
    rows = [{"step": e["step"], "grad_norm": e["grad_norm"],
             **{f"grad_{k}": v for k, v in e["grad_norm_by_group"].items()},
             **{f"ratio_{k}": v for k, v in e["update_ratio"].items()}}
            for e in log_events(run_dir, "stability")]
    return pd.DataFrame(rows)


def read_lr(run_dir: str | Path) -> pd.DataFrame:
    """The learning rate the run actually used at each optimizer step (from its log)."""
    return pd.DataFrame(log_events(run_dir, "training_step"), columns=["step", "lr", "max_steps"])


def analysis_dir(profile: str) -> Path:
    """Where the analysis of a ledger goes, beside it: <results>/analysis/<profile>/."""
    return ledger.results_root(profile) / "analysis" / profile


def read_studies(profile: str) -> dict[str, dict]:
    """{study name: record} of every study recorded for the profile."""
    paths = sorted(studies_dir(profile).glob("*.json"))
    return {p.stem: ledger.read_json(p) for p in paths if p.name != "ladder.json"}


def study_frame(record: dict, results: pd.DataFrame) -> pd.DataFrame:
    """A study's rows joined with the runs' results (one row per point and seed)."""
    rows = pd.DataFrame(record["rows"])
    keep = ["hash", "run", "status", "final_val_loss", "full_val_bpc", "full_val_loss", "official_coverage",
            "ratio_to_baseline", "n_params", "tokens_per_s", "wall_time_s"]
    return rows.merge(results[keep], on="hash", how="left")


def recorded(profile: str, study: str | None, results: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """A recorded study of the profile joined with `results` (default: the profile's); None if there is none."""
    rec = read_studies(profile).get(study)
    return None if rec is None else study_frame(rec, load_results(profile) if results is None else results)


def ladder_frame(profile: str, results: pd.DataFrame) -> pd.DataFrame:
    """The ladder's stages in order, each joined with its run's results."""
    stages = pd.DataFrame(read_ladder(profile), columns=["stage", "hash", "label", "note"])
    return stages.merge(results, on="hash", how="left")


def read_tests(root: Path) -> pd.DataFrame:
    """One row per saved test-set evaluation (<root>/test/*.json): hash, test set, official and full loss."""
    recs = [ledger.read_json(p) for p in sorted((root / "test").glob("*-test-*.json"))]
    rows = [[d["hash"], d["run"], (d.get("test") or {}).get("test_set"), d.get("official_loss"),
             d.get("full_loss"), d.get("official_coverage")] for d in recs]
    return pd.DataFrame(rows, columns=["hash", "run", "test_set", "official", "full", "coverage"])


def run_dir(profile: str, run_hash: str) -> Path:
    """A run's folder in the profile's ledger (FileNotFoundError naming the ledger where it is not there)."""
    d = ledger.find_run(ledger.results_root(profile), run_hash)
    if d is None:
        raise FileNotFoundError(f"run {run_hash} is not in the {profile} ledger ({ledger.results_root(profile)})")
    return d


def curves_of(profile: str, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{label: validation curve} for the finished points of a study frame (first seed of each)."""
    ok = frame[frame["status"] == "finished"].drop_duplicates("label")
    return {r.label: read_curve(run_dir(profile, r.hash)) for r in ok.itertuples()}


def planned_schedule(cfg: Config, total_steps: int | None = None) -> pd.DataFrame:
    """The LR a config will use at each optimizer step, before training (steps counted as the trainer does,
    unless `total_steps` is given)."""
    from .data import prepare
    from .optim import lr_multiplier, peak_lr

    if not total_steps:
        micro = len(prepare(cfg).train_ids) // (cfg.block_size * cfg.batch_size)
        total_steps = cfg.epochs * (micro // cfg.grad_accum)
    lrs = [peak_lr(cfg) * lr_multiplier(cfg, s, total_steps) for s in range(total_steps)]
    return pd.DataFrame({"step": range(1, total_steps + 1), "lr": lrs, "max_steps": total_steps})
