"""What the notebooks show, under one import (`from mainrun import analysis`): notes and tables for a reader,
and the ledger queries, statistics and report inputs they call (re-exported). Nothing here trains."""
from __future__ import annotations

import pandas as pd

from . import ledger
from .config import Config, make_config
from .formats import fmt_bpc, fmt_int, fmt_loss, fmt_time
from .report_inputs import analysis_dir, read_study_roles, write_report_inputs  # noqa: F401  (re-exported)
from .report_text import PROXY_NOTE, TEXT, say
from .stats import compare, permutation_p  # noqa: F401
from .tables import (curves_of, load_results, planned_schedule, read_curve, read_studies,  # noqa: F401
                     recorded, run_dir, study_frame, without_pauses)


def profile_note(profile: str) -> str:
    """What the numbers of this profile can and cannot show (displayed at the top of each notebook)."""
    return PROXY_NOTE[profile] or say("notebook.full_profile")


def show_config(cfg: Config) -> None:
    """Print a config as its changes from the profile's baseline (the full dataclass is `print(cfg)`)."""
    ref = make_config(cfg.profile, "baseline").to_dict()
    changed = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "preset") and ref.get(k) != v}
    print(f"{cfg.run_name}: changes from the {cfg.profile} baseline: {changed or 'none'}")


def metric_notes(summary: dict, profile: str) -> pd.DataFrame:
    """The official metric beside the full-coverage one, with what each number means (running wall time and
    tokens/s where the run was paused)."""
    folder = ledger.find_run(ledger.results_root(profile), summary["hash"])
    timing = without_pauses(summary, folder) if folder is not None else {"paused_s": 0.0}
    summary = {**summary, **timing}
    paused = ""
    if timing["paused_s"] > 0 and "wall_time_raw_s" in timing:
        paused = say("notebook.paused", paused=fmt_time(timing["paused_s"]),
                     raw=fmt_time(timing["wall_time_raw_s"]))
    values = {"official validation loss": fmt_loss(summary["final_val_loss"]),
              "official coverage": f"{summary['official_coverage']:.1%}",
              "full-coverage loss": fmt_loss(summary["full_val_loss"]),
              "full-coverage bits/char": fmt_bpc(summary["full_val_bpc"]),
              "validation tokens / chars": f"{summary['val_tokens']:,} / {summary['val_chars']:,}",
              "parameters": fmt_int(summary["n_params"]), "wall time": fmt_time(summary["wall_time_s"]),
              "tokens/s": fmt_int(summary["tokens_per_s"]), "official run": "yes" if summary["official"] else "no"}
    reasons = "; ".join(summary.get("official_reasons") or [])
    rows = [(q, values[q], meaning.format(paused=paused, reasons=reasons))
            for q, meaning in TEXT["notebook"]["meaning"].items()]
    return pd.DataFrame(rows, columns=["quantity", "value", "meaning"])


def run_status(summary: dict) -> str:
    """One line on where a run stands (finished, diverged, training elsewhere, or not run)."""
    status, rule = summary["status"], summary.get("diverged_rule")
    key = status if status in TEXT["notebook"]["status"] else "missing"
    return say(f"notebook.status.{key}", **{**summary, "name": f"{summary['name']}-{summary['hash']}",
                                            "loss": fmt_loss(summary.get("final_val_loss")),
                                            "last": fmt_loss(summary.get("last_val_loss")),
                                            "rule": f" (rule: {rule})" if rule else ""})


def gpu_study(profile: str, study: str) -> pd.DataFrame:
    """A recorded study (e.g. one on a lent GPU) compared against its first point; empty if there is none."""
    frame = recorded(profile, study)
    if frame is None:
        return pd.DataFrame()
    out = compare(frame.drop_duplicates("hash").fillna({"status": "missing"}))
    out.insert(0, "study", study)
    return out


def elsewhere(profile: str, rung: str) -> str | None:
    """The rung's result on the other device, from the GPU ladder study of report/studies.yml; else None."""
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
    """A study's points with a result on this device as a comparison table; each other point in a line, with
    the rung's result on the other device where there is one (`rungs`: label -> rung where they differ)."""
    rungs = rungs or {}
    have = df["status"].isin(["finished", "pruned", "diverged"])
    for label in dict.fromkeys(df.loc[~have, "label"]):
        rung = rungs.get(label, label)
        other = elsewhere(profile, rung)
        print(f"{label}: not trained at {profile} scale on this device"
              + (f"; {rung} {other}" if other else "; no other device has it in this ledger either"))
    return compare(df[have]) if have.any() else None
