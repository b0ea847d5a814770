"""What the notebooks show, under one import (`from mainrun import analysis`): notes and tables for a reader
of a notebook, and the ledger queries, statistics and report inputs they call, re-exported from `tables`,
`stats` and `report_inputs`. Nothing here trains."""
from __future__ import annotations

import pandas as pd

from . import ledger
from .config import Config, make_config
from .formats import fmt_bpc, fmt_int, fmt_loss, fmt_time
from .report_inputs import analysis_dir, read_study_roles, write_report_inputs  # noqa: F401  (re-exported)
from .report_text import PROXY_NOTE
from .stats import compare, permutation_p  # noqa: F401
from .tables import (curves_of, load_results, planned_schedule, read_curve, read_studies,  # noqa: F401
                     recorded, run_dir, study_frame, without_pauses)


def profile_note(profile: str) -> str:
    """What the numbers of this profile can and cannot show (displayed at the top of each notebook)."""
    return PROXY_NOTE[profile] or "Profile **full**: the Mainrun rules (7 epochs, seed 1337, 100,000 titles)."


def show_config(cfg: Config) -> None:
    """Print a config as its changes from the profile's baseline (the full dataclass is `print(cfg)`)."""
    ref = make_config(cfg.profile, "baseline").to_dict()
    changed = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "preset") and ref.get(k) != v}
    print(f"{cfg.run_name}: changes from the {cfg.profile} baseline: {changed or 'none'}")


def metric_notes(summary: dict, profile: str) -> pd.DataFrame:
    """The official metric beside the full-coverage one, with what each number means. Wall time and tokens/s
    are the running ones where the run was paused (see `tables.pauses`)."""
    folder = ledger.find_run(ledger.results_root(profile), summary["hash"])
    timing = without_pauses(summary, folder) if folder is not None else {"paused_s": 0.0}
    summary = {**summary, **timing}
    paused = ""
    if timing["paused_s"] > 0 and "wall_time_raw_s" in timing:
        paused = (f"; {fmt_time(timing['paused_s'])} paused left out of the logged "
                  f"{fmt_time(timing['wall_time_raw_s'])}")
    rows = [
        ("official validation loss", fmt_loss(summary["final_val_loss"]),
         "summed token cross-entropy over full 64 x 128 spans / characters of the validation text"),
        ("official coverage", f"{summary['official_coverage']:.1%}",
         "fraction of validation targets those spans score (the tail and one target per span are dropped)"),
        ("full-coverage loss", fmt_loss(summary["full_val_loss"]), "every validation target scored, nats/char"),
        ("full-coverage bits/char", fmt_bpc(summary["full_val_bpc"]), "the same in bits per character"),
        ("validation tokens / chars", f"{summary['val_tokens']:,} / {summary['val_chars']:,}", ""),
        ("parameters", fmt_int(summary["n_params"]), ""),
        ("wall time", fmt_time(summary["wall_time_s"]),
         f"training and validation, without data preparation{paused}"),
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
        return (f"{name}: not finished: logged step {summary['last_step']} of {summary['max_steps']}, last "
                f"official loss {fmt_loss(summary['last_val_loss'])} at step {summary['last_val_step']}; it "
                f"resumes from its checkpoint with train=True (or `python -m mainrun train` with the same "
                f"settings)")
    return f"{name}: not in the ledger; train it with train=True (or `python -m mainrun train`)"


def gpu_study(profile: str, study: str) -> pd.DataFrame:
    """A recorded study (e.g. one run on a lent GPU) as a comparison table against its first point; empty if
    the ledger has no such study."""
    frame = recorded(profile, study)
    if frame is None:
        return pd.DataFrame()
    out = compare(frame.drop_duplicates("hash").fillna({"status": "missing"}))
    out.insert(0, "study", study)
    return out


def elsewhere(profile: str, rung: str) -> str | None:
    """The same rung's result on the other device, where the ledger has it: the GPU ladder study named in
    report/studies.yml (the seed plan's rungs at full scale); None otherwise."""
    study = (read_study_roles().get("gpu") or {}).get("ladder")
    f = recorded(profile, study)
    if f is None:
        return None
    hit = f[(f["label"] == rung) & (f["status"] == "finished")]
    if hit.empty:
        return None
    r = hit.iloc[0]
    return (f"on the GPU at {profile} scale (study {study}): official loss {fmt_loss(r['final_val_loss'])}, "
            f"ratio {r['ratio_to_baseline']:.3f} to the GPU baseline")


def show_study(profile: str, df: pd.DataFrame, rungs: dict[str, str] | None = None) -> pd.DataFrame | None:
    """A study's points that have a result on this device as a comparison table; each point without one in a
    line of its own, with the same rung's result on the other device where the ledger has it (`rungs`: a
    point's rung where its label is not the rung's name, e.g. {"kept": "epic2"})."""
    rungs = rungs or {}
    have = df["status"].isin(["finished", "pruned", "diverged"])
    for label in dict.fromkeys(df.loc[~have, "label"]):
        rung = rungs.get(label, label)
        other = elsewhere(profile, rung)
        print(f"{label}: not trained at {profile} scale on this device"
              + (f"; {rung} {other}" if other else "; no other device has it in this ledger either"))
    return compare(df[have]) if have.any() else None
