"""The ledger as tables, and the report's inputs: figures, markdown tables, numbers.

Everything here reads stored results only (run folders, study records, the
ladder); nothing trains. `write_report_inputs(profile)` is what 05_analysis
calls: it writes <results>/analysis/<profile>/ with

    fig-curves.png fig-lr.png fig-sensitivity.png   the report's figures
    ladder.md results.md seeds.md coverage.md ...    markdown tables and paragraphs
    numbers.json                                      every headline number, for tests and readers
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import ledger
from .config import STANDIN_SHA256, Config, make_config
from .evaluate import official_coverage
from .sweep import STUDY_PROFILE, by_point, read_ladder, studies_dir

PROXY_NOTE = {
    "full": "",
    "quick": ("These are **quick-profile proxy results**: a 2-layer, 64-wide model on 10,000 titles, "
              "for studying the same questions at CPU scale. They rank ideas; they are not Mainrun numbers."),
    "smoke": ("These are **smoke-profile results**: a seconds-long pipeline check on a 1-layer, 32-wide model. "
              "They prove the machinery works and carry no evidence about which idea is better."),
}


# ----------------------------------------------------------------------------- formats (one place)
def fmt_loss(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{x:.4f}"


def fmt_bpc(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{x:.3f}"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{x:.3f}"


def fmt_time(s: float | None) -> str:
    if s is None or _nan(s):
        return "n/a"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def fmt_int(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{int(round(x)):,}"


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ----------------------------------------------------------------------------- loading
def analysis_dir(profile: str) -> Path:
    """Beside the ledger the numbers come from: <results>/analysis/<profile>/."""
    return ledger.results_root(profile) / "analysis" / profile


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
    """One row per run of `profile` in its ledger: metrics, ratio to the baseline, and the config fields.

    Ratios are taken against the finished baseline trained on the same kind of device (CPU runs
    against the CPU baseline, GPU runs against the GPU one). While a device has no finished
    baseline its runs are compared with another device's, and `ratio_provisional` says so."""
    rows = []
    for r in ledger.load_runs(ledger.results_root(profile)):
        cfg = r["config"]
        if cfg.get("profile") != profile:
            continue
        s = r["summary"] or {}
        row = {"run": r["dir"].name.rsplit("-", 1)[0], "hash": r["hash"], "dir": str(r["dir"]),
               **{k: s.get(k) for k in SUMMARY_FIELDS}, "status": r["status"],
               "hardware": _hardware_text(s.get("hardware"))}
        row.update({k: v for k, v in _device_and_progress(r).items() if v is not None or k not in row})
        row.update(_without_pauses(row, r["dir"]) if r["status"] == "finished" else {"paused_s": 0.0})
        row.update({k: v for k, v in cfg.items() if k not in row and k != "name"})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    refs: dict[str, tuple[str, float]] = {}
    for dev in df["device"].dropna().unique():
        base = baseline_hash(df[df["device"] == dev], profile)
        if base:
            refs[dev] = (base, df.loc[df["hash"] == base, "final_val_loss"].iloc[0])
    fallback = refs.get("cpu") or next(iter(refs.values()), None)
    df["ratio_to_baseline"] = float("nan")
    df["ratio_reference"] = None
    df["ratio_provisional"] = False
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


def _without_pauses(row: dict, run_dir: Path) -> dict[str, Any]:
    """Wall time and tokens/s of the time a run was running (see `pauses`); the raw figures kept beside."""
    p = pauses(run_dir)
    out: dict[str, Any] = {"paused_s": float(p["wall_s"].sum())}
    wall, tps, train = row.get("wall_time_s"), row.get("tokens_per_s"), row.get("train_time_s")
    if out["paused_s"] <= 0 or wall is None or _nan(wall):
        return out
    out.update(wall_time_raw_s=wall, tokens_per_s_raw=tps, wall_time_s=wall - out["paused_s"])
    paused_train = float(p["train_s"].sum())
    if tps is not None and not _nan(tps) and train and not _nan(train) and train - paused_train > 0:
        out["tokens_per_s"] = tps * train / (train - paused_train)
    return out


def _hardware_text(hw: dict | None) -> str | None:
    if not hw:
        return None
    text = f"{hw.get('gpu') or hw.get('cpu')} ({hw.get('device')}, {hw.get('cpu_count')} CPU cores"
    return text + f", {hw.get('torch_threads')} torch threads, torch {hw.get('torch_version')})"


def _is_baseline(row: pd.Series, profile: str) -> bool:
    """Whether a run's config is the `baseline` preset of this profile (any precision, the default seed)."""
    ref = make_config(profile, "baseline", device="cpu", precision="fp32").hash_fields()
    ref.pop("precision")
    ref.pop("device", None)
    extra_seed = row.get("train_seed") not in (None, -1) and not _nan(row.get("train_seed"))
    return all(row.get(k) == v for k, v in ref.items()) and not extra_seed


def baseline_hash(df: pd.DataFrame, profile: str) -> str | None:
    """The finished run whose config is the `baseline` preset of this profile (any precision)."""
    done = df[df["status"] == "finished"].sort_values("started_at")
    return next((row["hash"] for _, row in done.iterrows() if _is_baseline(row, profile)), None)


PAUSE_GAP_S = 600.0   # no training step or evaluation of these runs takes 10 minutes


def pauses(run_dir: str | Path) -> pd.DataFrame:
    """Stretches a run's process spent stopped (SIGSTOP, so that other runs had the cores), from its log.

    One row per pause: `step` (the training step it followed), `wall_s` (seconds it adds to the run's
    elapsed time) and `train_s` (the part that fell in a training step rather than an evaluation:
    train_time_s leaves evaluations out). Between two consecutive training steps the elapsed time
    holds one step, plus one evaluation where a validation_step follows the first; a step or an
    evaluation that took over PAUSE_GAP_S counts as paused beyond the run's median step or
    evaluation time. Time between sessions is not in the elapsed times at all (a resumed run
    continues from its checkpoint's), so only a live pause shows."""
    path = Path(run_dir) / "log.jsonl"
    events = ledger.read_log(path) if path.exists() else []
    steps = [e for e in events if e.get("event") == "training_step" and "elapsed_time" in e]
    evals = {e["step"]: e for e in events if e.get("event") == "validation_step" and "timestamp" in e}
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


def paused_time(run_dir: str | Path) -> float:
    """Seconds a run's process spent stopped in all (see `pauses`)."""
    return float(pauses(run_dir)["wall_s"].sum())


def read_curve(run_dir: str | Path) -> pd.DataFrame:
    """Validation events of a run: step, official loss, elapsed seconds, training tokens seen."""
    run_dir = Path(run_dir)
    cfg = ledger.read_json(run_dir / "config.json")["config"]
    per_step = cfg["batch_size"] * cfg["grad_accum"] * cfg["block_size"]
    ev = [e for e in ledger.read_log(run_dir / "log.jsonl") if e.get("event") == "validation_step"]
    df = pd.DataFrame(ev, columns=["step", "loss", "elapsed_time"])
    df["tokens"] = df["step"] * per_step
    # running time: a stretch the process spent stopped before an evaluation is left out
    p = pauses(run_dir)
    df["elapsed_time"] = df["elapsed_time"] - [p.loc[p["step"] < st, "wall_s"].sum() for st in df["step"]]
    return df


def read_lr(run_dir: str | Path) -> pd.DataFrame:
    """The learning rate the run actually used at each optimizer step (from its log)."""
    ev = [e for e in ledger.read_log(Path(run_dir) / "log.jsonl") if e.get("event") == "training_step"]
    return pd.DataFrame(ev, columns=["step", "lr", "max_steps"])


def read_studies(profile: str) -> dict[str, dict]:
    """{study name: record} of every study recorded for the profile."""
    d = studies_dir(profile)
    out = {}
    for p in sorted(d.glob("*.json")) if d.exists() else []:
        if p.name != "ladder.json":
            out[p.stem] = ledger.read_json(p)
    return out


def study_frame(record: dict, results: pd.DataFrame) -> pd.DataFrame:
    """A study's rows joined with the runs' results (one row per point and seed)."""
    rows = pd.DataFrame(record["rows"])
    keep = ["hash", "run", "status", "final_val_loss", "full_val_bpc", "full_val_loss", "official_coverage",
            "ratio_to_baseline", "n_params", "tokens_per_s", "wall_time_s"]
    return rows.merge(results[keep], on="hash", how="left")


def ladder_frame(profile: str, results: pd.DataFrame) -> pd.DataFrame:
    """The ladder's stages in order, each joined with its run's results."""
    stages = pd.DataFrame(read_ladder(profile), columns=["stage", "hash", "label", "note"])
    return stages.merge(results, on="hash", how="left")


# ----------------------------------------------------------------------------- notebook helpers
def profile_note(profile: str) -> str:
    """What the numbers of this profile can and cannot show (displayed at the top of each notebook)."""
    return PROXY_NOTE[profile] or "Profile **full**: the Mainrun rules (7 epochs, seed 1337, 100,000 titles)."


def show_config(cfg: Config) -> None:
    """Print a config as its changes from the profile's baseline (the full dataclass is `print(cfg)`)."""
    ref = make_config(cfg.profile, "baseline").to_dict()
    changed = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "preset") and ref.get(k) != v}
    print(f"{cfg.run_name}: changes from the {cfg.profile} baseline: {changed or 'none'}")


def run_dir(profile: str, run_hash: str) -> Path:
    d = ledger.find_run(ledger.results_root(profile), run_hash)
    if d is None:
        raise FileNotFoundError(f"run {run_hash} is not in the {profile} ledger ({ledger.results_root(profile)})")
    return d


def curves_of(profile: str, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{label: validation curve} for the finished points of a study frame (first seed of each)."""
    ok = frame[frame["status"] == "finished"].drop_duplicates("label")
    return {r.label: read_curve(run_dir(profile, r.hash)) for r in ok.itertuples()}


def optimizer_steps(cfg: Config) -> int:
    """Optimizer steps of a run, as the trainer counts them (whole micro-batches per epoch)."""
    from .data import prepare

    micro = len(prepare(cfg).train_ids) // (cfg.block_size * cfg.batch_size)
    return cfg.epochs * (micro // cfg.grad_accum)


def planned_schedule(cfg: Config, total_steps: int | None = None) -> pd.DataFrame:
    """The LR a config will use at each optimizer step (the pure schedule, before training)."""
    from .optim import lr_multiplier, peak_lr

    total = total_steps or optimizer_steps(cfg)
    lrs = [peak_lr(cfg) * lr_multiplier(cfg, s, total) for s in range(total)]
    return pd.DataFrame({"step": range(1, total + 1), "lr": lrs, "max_steps": total})


def metric_notes(summary: dict, profile: str) -> pd.DataFrame:
    """The official metric beside the full-coverage one, with what each number means.

    Wall time and tokens/s are the running ones where the run was paused (see `pauses`)."""
    run_dir = ledger.find_run(ledger.results_root(profile), summary["hash"])
    timing = _without_pauses(summary, run_dir) if run_dir is not None else {"paused_s": 0.0}
    summary = {**summary, **timing}
    paused = (f"; {fmt_time(timing['paused_s'])} paused left out of the logged {fmt_time(timing['wall_time_raw_s'])}"
              if timing["paused_s"] > 0 and "wall_time_raw_s" in timing else "")
    rows = [
        ("official validation loss", fmt_loss(summary["final_val_loss"]),
         "summed token cross-entropy over full 64 x 128 spans / characters of the validation text"),
        ("official coverage", f"{summary['official_coverage']:.1%}",
         "fraction of validation targets those spans score (the tail and one target per span are dropped)"),
        ("full-coverage loss", fmt_loss(summary["full_val_loss"]), "every validation target scored, nats/char"),
        ("full-coverage bits/char", fmt_bpc(summary["full_val_bpc"]), "the same in bits per character"),
        ("validation tokens / chars", f"{summary['val_tokens']:,} / {summary['val_chars']:,}", ""),
        ("parameters", fmt_int(summary["n_params"]), ""),
        ("wall time", fmt_time(summary["wall_time_s"]), "training and validation, without data preparation" + paused),
        ("tokens/s", fmt_int(summary["tokens_per_s"]), "training tokens per second of optimizer steps"),
        ("official run", "yes" if summary["official"] else "no", "; ".join(summary.get("official_reasons") or [])),
    ]
    return pd.DataFrame(rows, columns=["quantity", "value", "meaning"])


def run_status(summary: dict) -> str:
    """One line on where a run stands (finished, diverged, training elsewhere, or not run)."""
    st, name = summary["status"], f"{summary['name']}-{summary['hash']}"
    if st == "finished":
        return f"{name}: finished, official loss {fmt_loss(summary['final_val_loss'])}"
    if st == "diverged":
        rule = summary.get("diverged_rule")
        return f"{name}: diverged at step {summary.get('diverged_step')}" + (f" (rule: {rule})" if rule else "")
    if st == "pruned":
        return (f"{name}: pruned by a search at step {summary.get('pruned_step')}, last official loss "
                f"{fmt_loss(summary.get('last_val_loss'))}")
    if st == "incomplete":
        return (f"{name}: not finished: logged step {summary['last_step']} of {summary['max_steps']}, last official "
                f"loss {fmt_loss(summary['last_val_loss'])} at step {summary['last_val_step']}; it resumes from its "
                f"checkpoint with train=True (or `python -m mainrun train` with the same settings)")
    return f"{name}: not in the ledger; train it with train=True (or `python -m mainrun train`)"


def gpu_study(profile: str, study: str) -> pd.DataFrame:
    """A GPU study of the ledger (scripts/gpu_study.py) as a comparison table; empty if absent."""
    rec = read_studies(profile).get(study)
    if rec is None:
        return pd.DataFrame()
    frame = study_frame(rec, load_results(profile)).drop_duplicates("hash")
    frame["status"] = frame["status"].fillna("missing")
    out = compare(frame)
    out.insert(0, "study", study)
    return out


def compare(frame: pd.DataFrame) -> pd.DataFrame:
    """A study frame as a readable table: each point against the first (the reference).
    Points without a finished run show their status instead of numbers."""
    ok = frame.drop_duplicates(["label", "seed"])
    loss = pd.to_numeric(ok["final_val_loss"], errors="coerce")
    bpc = pd.to_numeric(ok["full_val_bpc"], errors="coerce")
    ref, ref_bpc, first = loss.iloc[0], bpc.iloc[0], ok["label"].iloc[0]
    vs = lambda xs, r: ["" if _nan(x) or _nan(r) else f"{x / r - 1:+.2%}" for x in xs]
    return pd.DataFrame({
        "point": ok["label"], "seed": ok["seed"], "status": ok["status"], "official loss": loss.map(fmt_loss),
        f"vs {first}": vs(loss, ref), "full bits/char": ok["full_val_bpc"].map(fmt_bpc),
        f"full vs {first}": vs(bpc, ref_bpc), "params": ok["n_params"].map(fmt_int),
        "tokens/s": ok["tokens_per_s"].map(fmt_int), "wall time": ok["wall_time_s"].map(fmt_time),
    }).reset_index(drop=True)


# ----------------------------------------------------------------------------- derived tables
def permutation_p(a: list[float], b: list[float]) -> float | None:
    """Exact two-sided permutation test on the difference of means (no normality assumed).

    With 3 seeds a side the smallest possible p is 0.1: a few seeds cannot show significance."""
    if len(a) < 2 or len(b) < 2:
        return None
    pooled, n = list(a) + list(b), len(a)
    obs = abs(sum(a) / n - sum(b) / len(b))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), n):
        xa = [pooled[i] for i in idx]
        xb = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += abs(sum(xa) / n - sum(xb) / len(xb)) >= obs - 1e-12
        total += 1
    return hits / total


NO_CHANGE = 0.001  # |relative change| below 0.1% of the loss is reported as no change
SAME_COVERAGE = 0.001  # official coverages closer than this count as the same scored text


def findings(profile: str, results: pd.DataFrame) -> pd.DataFrame:
    """Every single change against its study's reference point (the spec's first named point).

    The verdict follows the official loss, except where the change moves how much of the validation
    text the official 64 x 128 spans score (a tokenizer or vocabulary change: more or fewer tokens,
    a different dropped tail). The official loss sums over the scored tokens but divides by every
    character, so scoring less text lowers it without a better model; there the verdict follows the
    full-coverage loss (every validation token), and `judged_on` says so; where that loss is not
    recorded the change is "not judged"."""
    rows = []
    for name, rec in read_studies(profile).items():
        if name in ("gpu_ladder", "gpu_seeds"):
            continue  # a ladder (each rung against the previous) and repeats: shown as tables, not as findings
        frame = study_frame(rec, results)
        ref_label = rec["rows"][0]["label"] if rec["rows"] else None
        stats = by_point(frame)
        if ref_label not in stats.index or len(stats) < 2:
            continue
        ref = stats.loc[ref_label]
        ok = frame[frame["status"] == "finished"]
        full = pd.to_numeric(ok["full_val_loss"], errors="coerce").groupby(ok["label"], sort=False).mean()
        cov = pd.to_numeric(ok["official_coverage"], errors="coerce").groupby(ok["label"], sort=False).mean()
        ref_hashes = set(frame.loc[frame["label"] == ref_label, "hash"])
        for label, s in stats.iterrows():
            if label == ref_label or set(frame.loc[frame["label"] == label, "hash"]) <= ref_hashes:
                continue  # the reference itself, reached under another label
            delta = s["loss_mean"] / ref["loss_mean"] - 1
            full_delta = full.get(label, math.nan) / full.get(ref_label, math.nan) - 1
            moved = abs(cov.get(label, math.nan) - cov.get(ref_label, math.nan)) > SAME_COVERAGE
            judged_on = ("official" if not moved else "full coverage" if not _nan(full_delta) else "none")
            judged_delta = full_delta if judged_on == "full coverage" else delta
            verdict = ("not judged" if judged_on == "none" else "no change" if abs(judged_delta) < NO_CHANGE
                       else "helped" if judged_delta < 0 else "did not help")
            devices = results.loc[results["hash"].isin(frame.loc[frame["label"] == label, "hash"]), "device"]
            rows.append({"study": name, "change": label, "reference": ref_label, "loss": s["loss_mean"],
                         "reference_loss": ref["loss_mean"], "delta": delta, "seeds": int(s["seeds"]),
                         "verdict": verdict, "device": "/".join(sorted(set(devices.dropna()))) or None,
                         "full_delta": full_delta, "coverage": cov.get(label, math.nan),
                         "reference_coverage": cov.get(ref_label, math.nan), "judged_on": judged_on,
                         "judged_delta": judged_delta})
    return pd.DataFrame(rows, columns=["study", "change", "reference", "loss", "reference_loss", "delta", "seeds",
                                       "verdict", "device", "full_delta", "coverage", "reference_coverage",
                                       "judged_on", "judged_delta"])


def coverage_check(ladder: pd.DataFrame) -> pd.DataFrame:
    """Step-1 check of the metric's normalisation: an untrained model (logits ~ 0) predicts
    nearly uniformly, so its official loss should be ln(V) x scored tokens / validation chars."""
    rows = []
    for _, st in ladder.dropna(subset=["dir"]).iterrows():
        events = ledger.read_log(Path(st["dir"]) / "log.jsonl")
        info = next((e for e in events if e.get("event") == "dataset_info"), None)
        first = next((e for e in events if e.get("event") == "validation_step"), None)
        if info is None or first is None:
            continue
        scored, frac = official_coverage(info["val_tokens"])
        expected = math.log(info["vocab_size"]) * scored / info["val_chars"]
        rows.append({"stage": st["stage"], "vocab": info["vocab_size"], "coverage": frac,
                     "step1_loss": first["loss"], "uniform_loss": expected, "ratio": first["loss"] / expected})
    return pd.DataFrame(rows, columns=["stage", "vocab", "coverage", "step1_loss", "uniform_loss", "ratio"])


def time_to_quality(final_dir: str | Path, target: float) -> float | None:
    """Seconds until a run's validation loss first reaches `target` (None if it never does)."""
    c = read_curve(final_dir)
    hit = c[c["loss"] <= target]
    return float(hit["elapsed_time"].iloc[0]) if len(hit) else None


# ----------------------------------------------------------------------------- markdown
def md_table(df: pd.DataFrame, align: str = "", min_dashes: int = 8) -> str:
    """A pandoc/Quarto pipe table; align is one of l/r per column (default: l then r)."""
    cols = list(df.columns)
    align = align or "l" + "r" * (len(cols) - 1)
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    # dash counts set relative widths when a table is wider than the page: give short columns room
    sep = ["-" * max(min_dashes, w - 1) + ":" if a == "r" else ":" + "-" * max(min_dashes, w - 1)
           for w, a in zip(widths, align)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def _short(run: str, profile: str) -> str:
    return run[len(profile) + 1:] if run.startswith(profile + "-") else run


def results_table(results: pd.DataFrame, profile: str) -> pd.DataFrame:
    done = results[results["status"] == "finished"].sort_values("final_val_loss")
    return pd.DataFrame({
        "run": [_short(r, profile) for r in done["run"]],
        "official loss": done["final_val_loss"].map(fmt_loss),
        "full bits/char": done["full_val_bpc"].map(fmt_bpc),
        "ratio": done["ratio_to_baseline"].map(fmt_ratio),
        "params": done["n_params"].map(fmt_int),
        "wall time": done["wall_time_s"].map(fmt_time),
        "tokens/s": done["tokens_per_s"].map(fmt_int),
        "official": done["official"].map(lambda o: "yes" if o else "no"),
    })


def _loss_or_progress(row: pd.Series) -> str:
    """The official loss, or for a run still training its last logged one."""
    if not _nan(row.get("final_val_loss")) and row.get("final_val_loss") is not None:
        return fmt_loss(row["final_val_loss"])
    if row.get("status") == "incomplete" and not _nan(row.get("last_val_loss")) and row.get("last_val_loss") is not None:
        return f"training: {fmt_loss(row['last_val_loss'])} at step {int(row['last_val_step'])}"
    return "n/a"


def ladder_table(ladder: pd.DataFrame) -> pd.DataFrame:
    prev = ladder["final_val_loss"].shift(1)
    return pd.DataFrame({
        "stage": ladder["stage"], "run": ladder["label"],
        "official loss": [_loss_or_progress(r) for _, r in ladder.iterrows()],
        "vs previous": [("" if _nan(p) or _nan(x) else f"{x / p - 1:+.1%}") for x, p in zip(ladder["final_val_loss"], prev)],
        "ratio": ladder["ratio_to_baseline"].map(fmt_ratio),
        "full bits/char": ladder["full_val_bpc"].map(fmt_bpc),
        "params": ladder["n_params"].map(fmt_int),
        "wall time": ladder["wall_time_s"].map(fmt_time),
        "tokens/s": ladder["tokens_per_s"].map(fmt_int),
    })


BASELINE_FIELDS = ("optimizer", "lr", "schedule", "n_layer", "n_head", "d_model", "vocab_size", "norm", "pos",
                   "dropout", "batch_size", "epochs", "num_titles")
NOT_SETTINGS = ("name", "profile", "preset", "data", "precision", "device", "checkpoint_every")


def changes_table(ladder: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Each stage's config as changes from the profile's baseline, read from the run's config.json."""
    ref = make_config(profile, "baseline").to_dict()
    rows = []
    for st in ladder.dropna(subset=["dir"]).itertuples():
        cfg = ledger.read_json(Path(st.dir) / "config.json")["config"]
        if st.stage == "baseline":
            text = "baseline: " + ", ".join(f"{k}={cfg[k]}" for k in BASELINE_FIELDS)
        else:
            diff = {k: v for k, v in cfg.items() if k not in NOT_SETTINGS and ref.get(k) != v}
            text = ", ".join(f"{k}={v}" for k, v in diff.items()) or "none"
        rows.append({"stage": st.stage, "configuration": text})
    return pd.DataFrame(rows, columns=["stage", "configuration"])


# ----------------------------------------------------------------------------- the report's inputs
def write_report_inputs(profile: str) -> dict[str, Any]:
    """Write every figure, table and number the report uses; returns numbers.json's content."""
    from . import plots

    out = analysis_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(profile)
    if results.empty or not results["is_baseline"].any():
        raise RuntimeError(f"the {profile} ledger ({ledger.results_root(profile)}) has no finished baseline run; "
                           f"run notebooks/01_baseline.ipynb first")
    ladder = ladder_frame(profile, results)
    # the sweeps ran on the study profile (the quick proxy under full; see sweep.STUDY_PROFILE)
    proxy = STUDY_PROFILE[profile]
    proxy_results = results if proxy == profile else load_results(proxy)
    studies = ({k: study_frame(v, proxy_results) for k, v in read_studies(proxy).items()}
               if len(proxy_results) else {})
    done = ladder.dropna(subset=["final_val_loss"])
    final_device = done.iloc[-1]["device"] if len(done) else "cpu"
    bases = results[results["is_baseline"]]
    same = bases[bases["device"] == final_device]
    base = (same if len(same) else bases).iloc[0]
    final = done.iloc[-1] if len(done) else base
    provisional = base["device"] != final["device"]

    # figures
    curves = {f"{s.stage}: {s.label}": read_curve(s.dir) for s in ladder.dropna(subset=["dir"]).itertuples()}
    plots.save(plots.validation_curves(curves), out / "fig-curves.png", close=True)
    lrs = {f"{s.stage}: {s.label}": read_lr(s.dir) for s in ladder.dropna(subset=["dir"]).itertuples()}
    plots.save(plots.lr_schedules(lrs), out / "fig-lr.png", close=True)
    sweep = studies.get("04_sweeps")
    (out / "sweep_edges.md").write_text(_edges_md(sweep))
    seeds = studies.get("04_seeds")
    seed_table = seeds
    final_rec = read_studies(profile).get("04_final") if proxy != profile else None
    if final_rec:  # the final configuration's seeds at full scale, beside the proxy's candidates
        fin = study_frame(final_rec, results).assign(label=f"final ({profile} scale)")
        seed_table = fin if seeds is None else pd.concat([seeds, fin], ignore_index=True)
    band = None
    if seeds is not None:
        st = by_point(seeds)
        if "base" in st.index and st.loc["base", "seeds"] > 1:
            band = (st.loc["base", "loss_mean"], st.loc["base", "loss_std"])
    fig = plots.sensitivity(sweep if sweep is not None else pd.DataFrame(), band, seeds)
    plots.save(fig, out / "fig-sensitivity.png", close=True)

    # tables and paragraphs
    (out / "results.md").write_text(md_table(results_table(results, profile), "lrrrrrrl"))
    (out / "ladder.md").write_text(md_table(ladder_table(ladder), "llrrrrrrr"))
    (out / "changes.md").write_text(md_table(changes_table(ladder, profile), "ll", min_dashes=40))
    cov = coverage_check(ladder)
    (out / "coverage.md").write_text(md_table(pd.DataFrame({
        "stage": cov["stage"], "vocabulary": cov["vocab"].map(fmt_int),
        "official coverage": cov["coverage"].map(lambda x: f"{x:.1%}"),
        "step-1 loss": cov["step1_loss"].map(fmt_loss), "uniform expectation": cov["uniform_loss"].map(fmt_loss),
        "ratio": cov["ratio"].map(lambda x: f"{x:.3f}")})))
    seed_info = _seeds_section(seed_table, out)
    (out / "gpu.md").write_text(gpu_section(profile, results, out, proxy_results))
    # each finding is judged against the seed spread of its own scale: the proxy's base candidate, or the
    # final configuration's seeds at full scale
    found = findings(profile, results)
    noise = {"cpu": (seed_info.get(f"final ({profile} scale)") or {}).get("std"), "cuda": _gpu_seed_std(profile, results)}
    if proxy != profile:
        found["study"] = [f"{st}, {profile} scale on the {DEVICE_NAME.get(d, d)}" if d else st
                          for st, d in zip(found["study"], found["device"])]
        found["noise"] = [noise.get(d) for d in found["device"]]
        if len(proxy_results):
            proxy_found = findings(proxy, proxy_results)
            proxy_found["study"] += f", {proxy} proxy"
            proxy_found["noise"] = (seed_info.get("base") or {}).get("std")
            found = pd.concat([found, proxy_found], ignore_index=True)
    else:
        found["noise"] = (seed_info.get("base") or {}).get("std")
    (out / "findings.md").write_text(_findings_md(found))

    numbers = {
        "profile": profile, "n_runs": int((results["status"] == "finished").sum()),
        "baseline": _run_numbers(base), "final": _run_numbers(final),
        "final_stage": final["stage"] if "stage" in final.index else "baseline",
        "ratio": float(final["final_val_loss"] / base["final_val_loss"]),
        # the same ratio on the loss that scores every validation token (the official spans score a
        # different share of the text under different tokenizers)
        "ratio_full_coverage": _py(pd.to_numeric(final.get("full_val_bpc"), errors="coerce")
                                   / pd.to_numeric(base.get("full_val_bpc"), errors="coerce")),
        "ratio_provisional": bool(provisional),
        "baseline_device": base["device"], "final_device": final["device"],
        "pending_baseline": _pending_baseline(results, final["device"]) if provisional else None,
        "time_to_baseline_s": time_to_quality(final["dir"], base["final_val_loss"]),
        "seeds": seed_info,
        "formatted": {"baseline_loss": fmt_loss(base["final_val_loss"]), "final_loss": fmt_loss(final["final_val_loss"]),
                      "ratio": fmt_ratio(final["final_val_loss"] / base["final_val_loss"]),
                      "baseline_bpc": fmt_bpc(base["full_val_bpc"]), "final_bpc": fmt_bpc(final["full_val_bpc"])},
    }
    (out / "summary.md").write_text(_summary_md(numbers, final, base) + _provisional_md(numbers, results)
                                    + _baselines_md(numbers, results))
    (out / "setup.md").write_text(_setup_md(results, base, profile))
    note = PROXY_NOTE[profile] or (f"Profile **full**: the Mainrun rules. The single-change studies and the sweeps "
                                   f"ran on the {proxy} proxy; only the kept configurations trained at full scale.")
    (out / "profile.md").write_text(note + "\n")
    (out / "numbers.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    return numbers


def _run_numbers(row: pd.Series) -> dict[str, Any]:
    keys = ("run", "hash", "final_val_loss", "full_val_bpc", "n_params", "wall_time_s", "paused_s", "tokens_per_s",
            "official", "wall_time_raw_s", "tokens_per_s_raw")
    return {k: _py(row.get(k)) for k in keys}


def _py(v: Any) -> Any:
    """numpy scalars and NaN -> plain JSON values."""
    v = v.item() if hasattr(v, "item") else v
    return None if _nan(v) else v


def _seeds_section(seeds: pd.DataFrame | None, out: Path) -> dict[str, Any]:
    """seeds.md (per candidate: mean, std, range) and the permutation p-value between them."""
    if seeds is None or seeds.empty:
        (out / "seeds.md").write_text("No seed study has been recorded for this profile.\n")
        (out / "seeds_test.md").write_text("\n")
        return {}
    st = by_point(seeds)
    table = pd.DataFrame({"candidate": st.index, "seeds": st["seeds"].astype(int),
                          "mean loss": st["loss_mean"].map(fmt_loss), "std": st["loss_std"].map(fmt_loss),
                          "min": st["loss_min"].map(fmt_loss), "max": st["loss_max"].map(fmt_loss)})
    info: dict[str, Any] = {k: {"n": int(r["seeds"]), "mean": _py(r["loss_mean"]), "std": _py(r["loss_std"])}
                            for k, r in st.iterrows()}
    text = md_table(table)
    note = "There are fewer than two candidates with two or more seeds: no test.\n"
    labels = list(st.index)
    if len(labels) >= 2:
        ok = seeds[seeds["status"] == "finished"]
        a = ok.loc[ok["label"] == labels[0], "final_val_loss"].tolist()
        b = ok.loc[ok["label"] == labels[1], "final_val_loss"].tolist()
        p = permutation_p(a, b)
        info["p_value"] = p
        if p is not None:
            note = (f"Exact permutation test of the difference of mean losses, {labels[1]} against {labels[0]} "
                    f"over their seeds: two-sided p = {p:.2f}.\n")
    (out / "seeds.md").write_text(text)
    (out / "seeds_test.md").write_text(note)
    return info


def _gpu_small_points(profile: str, results: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of the GPU's small-model studies, each once (a reference point is recorded in two)."""
    recs = read_studies(profile)
    small = [study_frame(recs[k], results).assign(study=k) for k in ("gpu_small", "gpu_final", "gpu_seeds")
             if k in recs]
    if not small:
        return pd.DataFrame()
    pts = pd.concat(small, ignore_index=True)
    return pts[pts["status"] == "finished"].drop_duplicates("hash")


def _gpu_seed_std(profile: str, results: pd.DataFrame) -> float | None:
    """The seed spread of the GPU's full-scale small models: the mean std over the points repeated with
    two or more seeds in the GPU studies (None if none was)."""
    pts = _gpu_small_points(profile, results)
    if pts.empty:
        return None
    g = pts.groupby("label")["final_val_loss"]
    stds = g.std(ddof=1)[g.size() >= 2]
    return float(stds.mean()) if len(stds) else None


def _findings_md(found: pd.DataFrame) -> str:
    """The findings grouped by verdict; `noise` (per row) is the seed std of that row's scale, if measured."""
    def line(r) -> str:
        s = (f"- **{r.change}** ({r.study}, against {r.reference}): {fmt_loss(r.loss)} vs "
             f"{fmt_loss(r.reference_loss)} ({r.delta:+.2%})")
        if r.judged_on == "full coverage":
            s += (f"; judged on the full-coverage loss, {r.full_delta:+.2%}: the official spans score "
                  f"{r.coverage:.1%} of its validation tokens against {r.reference_coverage:.1%}")
        elif r.noise and not _nan(r.noise) and abs(r.loss - r.reference_loss) < r.noise:
            s += ", within the seed spread (one std) at its scale"
        return s
    parts = []
    groups = (("helped", "What worked"), ("no change", f"No measurable change (under {NO_CHANGE:.1%})"),
              ("did not help", "What did not work"))
    if (found["verdict"] == "not judged").any():
        groups += (("not judged", "Not judged (the change moves what the official spans score, and its "
                                  "full-coverage loss is not recorded)"),)
    for verdict, title in groups:
        sub = found[found["verdict"] == verdict].sort_values("judged_delta")
        parts.append(f"**{title}** (official loss against the reference; the full-coverage loss where the change "
                     f"moves what the official spans score):\n")
        parts.append("\n".join(line(r) for r in sub.itertuples()) if len(sub) else "- nothing in this group")
        parts.append("")
    return "\n".join(parts) + "\n"


def _summary_md(n: dict, final: pd.Series, base: pd.Series) -> str:
    f = n["formatted"]
    prof = n["profile"]
    scale = {"full": "under the Mainrun rules", "quick": "at the quick (CPU proxy) scale",
             "smoke": "at the smoke (pipeline check) scale"}[prof]
    where = f" (on the {DEVICE_NAME.get(n['baseline_device'], '?')})" if n.get("ratio_provisional") else ""
    s = (f"Profile **{prof}**, {scale}: the reproduced baseline{where} reaches an official validation loss of "
         f"**{f['baseline_loss']}** ({f['baseline_bpc']} bits/char over the full validation text). "
         f"The last rung of the ladder, *{n['final_stage']}* (run `{final['run']}`), reaches **{f['final_loss']}** "
         f"({f['final_bpc']} bits/char) in {fmt_time(n['final']['wall_time_s'])} of wall time on the "
         f"{DEVICE_NAME.get(n.get('final_device'), '?')}: a ratio of **{f['ratio']}** to the baseline, "
         f"over {n['n_runs']} recorded runs.")
    rfc = n.get("ratio_full_coverage")
    if rfc is not None and not _nan(rfc):
        s += f" On the full-coverage loss, which scores every validation token, the ratio is {fmt_ratio(rfc)}."
    if n["time_to_baseline_s"] is not None:
        s += f" It first beats the baseline's final loss after {fmt_time(n['time_to_baseline_s'])} of training."
    official = final.get("official")
    official = bool(official) if official is not None and not _nan(official) else False
    s += (" The final run is official under the Mainrun rules." if official else
          " The final run is not official under the Mainrun rules (profile or seed differs from them), "
          "so it supports no headline claim.")
    return s + "\n"


def _setup_md(results: pd.DataFrame, base: pd.Series, profile: str) -> str:
    src = ledger.read_json(Path(base["dir"]) / "config.json").get("data_source", {})
    name = src.get("name") or Path(src.get("path", "?")).name
    if src.get("kind") == "hub":
        data = f"the hub dataset `{src.get('dataset')}`"
    elif src.get("sha256") == STANDIN_SHA256:
        data = (f"the offline stand-in `{name}` (sha256 {STANDIN_SHA256[:12]}...), Hacker News story titles "
                f"from 2016 to 2020, since the hub dataset of the original problem cannot be downloaded on these "
                f"machines. It is not the hub's selection of titles, so absolute losses are not comparable with "
                f"numbers measured on the hub's data; ratios to our own reproduced baseline are")
    else:
        data = f"the file `{name}` (not the designated stand-in)"
    hw = sorted(set(results["hardware"].dropna()))
    prec = ", ".join(sorted(results["precision"].dropna().unique()))
    text = (f"- *Data.* {base['num_titles']:,} titles, {base['val_frac']:.0%} held out for validation, from {data}.\n"
            f"- *Hardware.* {'; '.join(hw)}.\n- *Precision.* {prec}.\n"
            f"- *Profile.* {profile}; {int((results['status'] == 'finished').sum())} finished runs in the ledger.\n")
    code = _code_versions_md(results)
    if code:
        text += code
    paused = results[results["paused_s"] > 0] if "paused_s" in results else results.iloc[:0]
    if len(paused):
        runs = "; ".join(f"`{r.run}` {fmt_time(r.paused_s)} (logged wall time {fmt_time(r.wall_time_raw_s)})"
                         for r in paused.itertuples())
        text += (f"- *Paused runs.* A run was stopped (SIGSTOP) while other runs or benchmarks needed the cores; "
                 f"wall times, tokens/s, curves against time and the time-to-quality leave those stretches out "
                 f"(a step or an evaluation that took over {PAUSE_GAP_S / 60:.0f} min): {runs}. Other runs "
                 f"that shared the cores without a pause show the slower wall time they had.\n")
    return text



# ----------------------------------------------------------------------------- runs on two kinds of device
def _pending_baseline(results: pd.DataFrame, device: str) -> dict[str, Any] | None:
    """The unfinished baseline run on `device` (the one a provisional ratio waits for), if any."""
    cand = results[(results["device"] == device) & (results["status"] != "finished")]
    for _, r in cand.iterrows():
        if _is_baseline(r, r["profile"]):
            as_int = lambda v: None if _py(v) is None else int(v)
            return {"run": r["run"], "hash": r["hash"], "last_step": as_int(r.get("last_step")),
                    "max_steps": as_int(r.get("max_steps")), "last_val_step": as_int(r.get("last_val_step")),
                    "last_val_loss": _py(r.get("last_val_loss"))}
    return None


def curve_agreement(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any] | None:
    """Largest |difference| of two runs' validation losses over the evaluations both logged."""
    a, b = read_curve(dir_a).set_index("step")["loss"], read_curve(dir_b).set_index("step")["loss"]
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    diff = (a[common] - b[common]).abs()
    return {"evaluations": int(len(common)), "last_step": int(common.max()), "max_abs_diff": float(diff.max())}


def _baselines_md(n: dict, results: pd.DataFrame) -> str:
    """Where the baseline was reproduced on two kinds of device: how far apart the two runs are."""
    bases = results[results["is_baseline"]]
    if n["ratio_provisional"] or len(bases) < 2:
        return ""
    ref = bases[bases["hash"] == n["baseline"]["hash"]].iloc[0]
    other = bases[bases["hash"] != ref["hash"]].iloc[0]
    name = lambda r: f"{DEVICE_NAME.get(r['device'], r['device'])} ({r['precision']})"
    text = (f"\nThe baseline was reproduced on two kinds of device: on the {name(ref)} (the reference above) and on "
            f"the {name(other)} (run `{other['run']}`, official loss {fmt_loss(other['final_val_loss'])}, "
            f"{other['final_val_loss'] / ref['final_val_loss'] - 1:+.2%}).")
    agree = curve_agreement(ref["dir"], other["dir"])
    if agree:
        n["baseline_agreement"] = agree
        text += (f" Over the {agree['evaluations']} evaluations both logged their official losses differ by at "
                 f"most {agree['max_abs_diff']:.4f}.")
    return text + " Each device's runs are compared with its own baseline.\n"


def _provisional_md(n: dict, results: pd.DataFrame) -> str:
    if not n["ratio_provisional"]:
        return ""
    pend, base = n["pending_baseline"], n["baseline"]
    fin, other = DEVICE_NAME.get(n["final_device"], n["final_device"]), DEVICE_NAME.get(n["baseline_device"], "?")
    text = (f"\n**The ratio is provisional.** The final run trained on the {fin}, but the {fin} baseline has not "
            f"finished, so the ratio above is taken against the baseline trained on the {other} (run "
            f"`{base['run']}`, official loss {fmt_loss(base['final_val_loss'])}).")
    if pend:
        run_dir = lambda h: results.loc[results["hash"] == h, "dir"].iloc[0]      # not in numbers.json: local paths
        agree = curve_agreement(run_dir(pend["hash"]), run_dir(base["hash"]))
        text += (f" The {fin} baseline (run `{pend['run']}`) is at step {pend['last_step']} "
                 f"of {pend['max_steps']}; its last official loss is {fmt_loss(pend['last_val_loss'])} at step "
                 f"{pend['last_val_step']}.")
        if agree:
            n["curve_agreement"] = agree
            text += (f" Over the {agree['evaluations']} evaluations both have logged (to step {agree['last_step']}) "
                     f"the two baselines' official losses differ by at most {agree['max_abs_diff']:.4f}. The ratio "
                     f"is recomputed against the {fin} baseline once it finishes.")
    return text + "\n"


DEVICE_NAME = {"cpu": "CPU", "cuda": "GPU"}
GPU_STUDIES = ("gpu_ladder", "gpu_small", "gpu_final", "gpu_seeds", "gpu_ablate", "gpu_lr", "gpu_large")


# full-scale ablations of the final configuration that take back a change measured on the proxy:
# {ablation label: (proxy study, proxy change)}
ABLATION_OF = {"cosine": ("04_beyond", "wsd")}


def proxy_vs_full(profile: str, results: pd.DataFrame, proxy_results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each change measured both on the proxy and at full scale, with its relative effect on the official
    loss in each: the seed plan's rungs (proxy ladder against the GPU ladder, each rung against the
    previous one) and the final configuration's CPU ablations (final against the ablation).
    `proxy_results` is load_results of the proxy profile (loaded here when not given)."""
    proxy = STUDY_PROFILE[profile]
    cols = ["change", "proxy", "full", "where", "holds"]
    if proxy == profile:
        return pd.DataFrame(columns=cols)
    presults = load_results(proxy) if proxy_results is None else proxy_results
    if presults.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    plad = ladder_frame(proxy, presults).dropna(subset=["final_val_loss"]).set_index("stage")["final_val_loss"]
    rec = read_studies(profile).get("gpu_ladder")
    if rec is not None:
        g = study_frame(rec, results)
        g = g[g["status"] == "finished"].drop_duplicates("label").set_index("label")
        names = [n for n in g.index if n in plad.index]
        for prev, cur in zip(names, names[1:]):
            rows.append({"change": f"{cur} (rung)", "proxy": plad[cur] / plad[prev] - 1,
                         "full": g.loc[cur, "final_val_loss"] / g.loc[prev, "final_val_loss"] - 1,
                         "where": f"GPU, {_millions(g.loc[cur, 'n_params'])}"})
    recs = read_studies(proxy)
    ab = read_studies(profile).get("04_final_ablate")
    if ab is not None:
        a = study_frame(ab, results)
        a = a[a["status"] == "finished"].drop_duplicates("label").set_index("label")["final_val_loss"]
        for label, (study, change) in ABLATION_OF.items():
            if label not in a.index or "final" not in a.index or study not in recs:
                continue
            st = by_point(study_frame(recs[study], presults))
            ref = recs[study]["rows"][0]["label"]
            if change in st.index and ref in st.index:
                rows.append({"change": f"{change} (final vs {label})",
                             "proxy": st.loc[change, "loss_mean"] / st.loc[ref, "loss_mean"] - 1,
                             "full": a["final"] / a[label] - 1, "where": "CPU, final configuration"})
    out = pd.DataFrame(rows, columns=cols[:-1])
    out["holds"] = np.sign(out["proxy"]) == np.sign(out["full"])
    return out


def _code_versions_md(results: pd.DataFrame) -> str:
    """Runs whose code version is not one clean commit: a segment with no recorded commit, uncommitted
    changes to mainrun/ (marked *), or resumes under several commits (each summary's code_history)."""
    groups: dict[str, list[str]] = {}
    for r in results[results["status"] == "finished"].itertuples():
        hist = (ledger.read_json(Path(r.dir) / "summary.json") or {}).get("code_history") or []
        if len(hist) == 1 and hist[0].get("git_commit") and hist[0].get("git_dirty") is False:
            continue
        seg = [("no recorded commit" if not c.get("git_commit") else c["git_commit"][:7] + ("*" if c.get("git_dirty") else ""))
               for c in hist] or ["no recorded commit"]
        groups.setdefault(" then ".join(seg), []).append(r.run)
    if not groups:
        return ""
    parts = []
    for hist, runs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        who = ", ".join(f"`{n}`" for n in runs) if len(runs) <= 2 else f"{len(runs)} runs (`{runs[0]}`, ...)"
        parts.append(f"{who}: {hist}")
    return ("- *Code versions.* Every run records the commit it trained under, once per resumed segment "
            "(`code_history` in its summary; * = uncommitted changes under `mainrun/`). Not one clean commit: "
            + "; ".join(parts) + ".\n")


def _edges_md(sweep: pd.DataFrame | None, axis: str = "lr") -> str:
    """Where the best value of a swept axis lies in its grid (the sweep widens an edge at most twice)."""
    if sweep is None or not (sweep["axis"] == axis).any():
        return ""
    pts = by_point(sweep[sweep["axis"] == axis])
    if pts.empty:
        return ""
    values = sorted(pts["value"])
    best = pts.loc[pts["loss_mean"].idxmin(), "value"]
    tried = ", ".join(f"{v:g}" for v in values)
    if best in (values[0], values[-1]):
        end = "largest" if best == values[-1] else "smallest"
        return (f"The `{axis}` sweep's best value, {best:g}, is the {end} value tried ({tried}): the grid was widened "
                f"beyond that edge as far as the study allows and the best still sits on it, so a value further out "
                f"may do better on the proxy.\n")
    return f"The `{axis}` sweep's best value, {best:g}, lies inside the grid ({tried}).\n"


def _millions(n: float) -> str:
    return f"{n / 1e6:.1f}M"


def _best_of_curve(run_dir: str | Path) -> tuple[float, int]:
    c = read_curve(run_dir)
    i = c["loss"].idxmin()
    return float(c.loc[i, "loss"]), int(c.loc[i, "step"])


def gpu_section(profile: str, results: pd.DataFrame, out: Path, proxy_results: pd.DataFrame | None = None) -> str:
    """The full-scale studies run on a lent GPU (scripts/gpu_study.py): markdown, plus fig-gpu-curves.png."""
    from . import plots

    gpu = results[(results.get("device") == "cuda") & (results["status"] == "finished")] if len(results) else results
    recs = {k: v for k, v in read_studies(profile).items() if k in GPU_STUDIES}
    if gpu.empty or not recs:
        return "No run of this profile trained on a GPU.\n"
    frames = {k: study_frame(v, results) for k, v in recs.items()}
    hw = sorted(set(gpu["hardware"].dropna()))
    base = gpu[gpu["is_baseline"]]
    base_loss = base["final_val_loss"].iloc[0] if len(base) else float("nan")
    parts = [f"These runs follow the Mainrun rules (100,000 titles, 7 epochs, the 64 x 128 official evaluation in "
             f"fp32) but trained with bf16 autocast on {'; '.join(hw)}, so they are reported apart from the CPU "
             f"runs: ratios in this section are to the baseline trained on that GPU "
             f"(official loss {fmt_loss(base_loss)}). They were run by `scripts/gpu_study.py` in two calls of "
             f"the lent machine.\n"]
    lad = frames.get("gpu_ladder")
    if lad is not None and len(lad):
        lad = lad[lad["status"] == "finished"].drop_duplicates("label")
        best = [_best_of_curve(d) for d in lad["hash"].map(lambda h: results.loc[results["hash"] == h, "dir"].iloc[0])]
        prev = lad["final_val_loss"].shift(1)
        t = pd.DataFrame({
            "rung": lad["label"], "official loss": lad["final_val_loss"].map(fmt_loss),
            "vs previous": ["" if _nan(p) else f"{x / p - 1:+.1%}" for x, p in zip(lad["final_val_loss"], prev)],
            "ratio": lad["ratio_to_baseline"].map(fmt_ratio), "full bits/char": lad["full_val_bpc"].map(fmt_bpc),
            "lowest loss (step)": [f"{b:.4f} ({st})" for b, st in best], "params": lad["n_params"].map(fmt_int),
            "tokens/s": lad["tokens_per_s"].map(fmt_int)})
        sizes = lad["n_params"].map(_millions)
        other = [f"{r} {m}" for r, m in zip(lad["label"], sizes) if m != sizes.iloc[0]]
        parts += [md_table(t, "llrrrrrr"),
                  f": The seed plan at the original width and depth on the GPU ({sizes.iloc[0]} parameters"
                  + (f"; {', '.join(other)}" if other else "") + "), each rung the quick "
                  "proxy's kept configuration. The lowest loss column shows where a run was best before its end. "
                  "{#tbl-gpu-ladder}\n"]
    pts = _gpu_small_points(profile, results)
    if len(pts):
        stats = pts.groupby("label", sort=False).agg(
            loss=("final_val_loss", "mean"), std=("final_val_loss", "std"), seeds=("final_val_loss", "size"),
            bpc=("full_val_bpc", "mean"), params=("n_params", "first"), ratio=("ratio_to_baseline", "mean"))
        stats = stats.sort_values("loss")
        t = pd.DataFrame({
            "model": stats.index,
            "official loss": stats["loss"].map(fmt_loss),
            "seed std": [("" if n < 2 else f"{sd:.4f}") for sd, n in zip(stats["std"], stats["seeds"])],
            "seeds": stats["seeds"].astype(int), "ratio": stats["ratio"].map(fmt_ratio),
            "full bits/char": stats["bpc"].map(fmt_bpc), "params": stats["params"].map(fmt_int)})
        parts += [md_table(t, "lrrrrrr"),
                  ": Small models at full scale on the GPU (d = width, L = layers, v = vocabulary), mean over "
                  "their seeds. All use the beyond recipe (Epic 3's settings plus Muon, WSD, QK-norm, title mask, "
                  "untied embeddings; dropout 0.05, or none where marked drop0); the shapes were chosen to fit "
                  "60 minutes on 2 CPU cores. Across vocabularies read the full bits/char column: the official "
                  "spans score a different share of the validation text under each tokenizer. {#tbl-gpu-small}\n"]
    abl = frames.get("gpu_ablate")
    if abl is not None and len(abl):
        abl = abl[abl["status"] == "finished"].drop_duplicates("label")
        ref = abl.iloc[0]
        t = pd.DataFrame({"change": abl["label"], "official loss": abl["final_val_loss"].map(fmt_loss),
                          f"vs {ref['label']}": [f"{x / ref['final_val_loss'] - 1:+.2%}" for x in abl["final_val_loss"]],
                          "full bits/char": abl["full_val_bpc"].map(fmt_bpc), "params": abl["n_params"].map(fmt_int)})
        parts += [md_table(t, "lrrrr"),
                  ": One change at a time against the best small model on the GPU. {#tbl-gpu-ablate}\n"]
    held = proxy_vs_full(profile, results, proxy_results)
    if len(held):
        t = pd.DataFrame({"change": held["change"], "proxy": held["proxy"].map(lambda x: f"{x:+.1%}"),
                          "full scale": held["full"].map(lambda x: f"{x:+.1%}"), "where": held["where"],
                          "holds": held["holds"].map({True: "yes", False: "no"})})
        parts += [md_table(t, "lrrll"),
                  ": Does the quick proxy's ranking hold at full scale? Each change's effect on the official "
                  "loss on the proxy and at full scale (the ladder's rungs against the previous rung; an ablation "
                  "of the final configuration read as the change it takes back). It holds where both have the "
                  "same sign. {#tbl-proxy-vs-full}\n"]
        if not held["holds"].all():
            parts.append("Where @tbl-proxy-vs-full says no, a change that helped on the quick proxy did not help at "
                         "full scale" + (": the lowest-loss column of @tbl-gpu-ladder shows which of those runs were "
                                         "better before their end than at it (overfitting over 7 epochs)."
                                         if lad is not None and len(lad) else ".") + "\n")
    curves = {}
    if lad is not None and len(lad):
        for r in lad.itertuples():
            curves[f"{_millions(r.n_params)} {r.label}"] = read_curve(results.loc[results["hash"] == r.hash, "dir"].iloc[0])
    if len(pts):
        top = pts[pts["label"] == stats.index[0]].iloc[0]
        curves[f"small {top['label']}"] = read_curve(results.loc[results["hash"] == top["hash"], "dir"].iloc[0])
    if curves:
        plots.save(plots.validation_curves(curves, title="full scale on the GPU"), out / "fig-gpu-curves.png",
                   close=True)
        parts.append("![Validation curves of the GPU runs: the seed plan's ladder at the original size and the best small model, against "
                     "training tokens and wall time.](_generated/fig-gpu-curves.png){#fig-gpu-curves width=100%}\n")
    return "\n".join(parts)
