"""The report's generated text: the results, ladder and changes tables, and the short paragraphs whose
wording follows the data (summary, setup, findings, sweep edges, code versions, the baselines on two devices).
The words are in report/text.yml; here the data pick the sentences and fill them in. Each function returns
a string or a table and writes nothing (`report_inputs` writes them).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from . import ledger
from .config import STANDIN_SHA256, make_config
from .formats import fmt_bpc, fmt_int, fmt_loss, fmt_ratio, fmt_time, is_nan, md_table
from .tables import PAUSE_GAP_S
from .studies import by_point
from .presets import LADDER
from .stats import NO_CHANGE, curve_agreement

TEXT = yaml.safe_load((ledger.repo_root() / "report" / "text.yml").read_text(encoding="utf-8"))
PROXY_NOTE = {p: "" if p == "full" else t for p, t in TEXT["profile_note"].items()}   # full's names the proxy

DEVICE_NAME = {"cpu": "CPU", "cuda": "GPU"}
# The project's own budget (the Mainrun rules fix the epochs, not the time): a candidate's 7 epochs in 60 minutes
# on a 2-core CPU, so that a candidate and its extra seeds train within a working session on these machines.
CPU_BUDGET_S = 3600
PUBLISHED_BASELINE = 1.7533   # Mainrun's published baseline loss, on the hub dataset


def say(key: str, **values) -> str:
    """The text of report/text.yml at `key` ("group.name"), its placeholders filled from `values`."""
    node = TEXT
    for part in key.split("."):
        node = node[part]
    return node.format(**values)


# ----------------------------------------------------------------------------- tables
# the ledger's columns as the tables print them: header -> (column, format)
COLUMNS = {"official loss": ("final_val_loss", fmt_loss), "full bits/char": ("full_val_bpc", fmt_bpc),
           "ratio": ("ratio_to_baseline", fmt_ratio), "params": ("n_params", fmt_int),
           "wall time": ("wall_time_s", fmt_time), "tokens/s": ("tokens_per_s", fmt_int)}


def formatted(frame: pd.DataFrame, *headers: str) -> dict[str, pd.Series]:
    """The COLUMNS named by `headers`, read from `frame` and formatted as the tables print them."""
    return {h: frame[COLUMNS[h][0]].map(COLUMNS[h][1]) for h in headers}


def results_table(results: pd.DataFrame, profile: str) -> pd.DataFrame:
    done = results[results["status"] == "finished"].sort_values("final_val_loss")
    return pd.DataFrame({"run": done["run"].str.removeprefix(profile + "-"),
                         **formatted(done, "official loss", "full bits/char", "ratio", "params", "wall time",
                                     "tokens/s"),
                         "official": done["official"].map(lambda o: "yes" if o else "no")})


def _loss_or_progress(row: pd.Series) -> str:
    """The official loss, or for a run still training its last logged one."""
    if row.get("final_val_loss") is not None and not is_nan(row.get("final_val_loss")):
        return fmt_loss(row["final_val_loss"])
    last = row.get("last_val_loss")
    if row.get("status") == "incomplete" and last is not None and not is_nan(last):
        return f"training: {fmt_loss(row['last_val_loss'])} at step {int(row['last_val_step'])}"
    return "n/a"


def vs_previous(losses: pd.Series) -> list[str]:
    """Each loss against the one before it, as a signed percentage ("" for the first or a missing one)."""
    return ["" if is_nan(p) or is_nan(x) else f"{x / p - 1:+.1%}" for x, p in zip(losses, losses.shift(1))]


def ladder_table(ladder: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"stage": ladder["stage"], "run": ladder["label"],
                         "official loss": [_loss_or_progress(r) for _, r in ladder.iterrows()],
                         "vs previous": vs_previous(ladder["final_val_loss"]),
                         **formatted(ladder, "ratio", "full bits/char", "params", "wall time", "tokens/s")})


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


def findings_md(found: pd.DataFrame) -> str:
    """What worked, one table per scale (the column `scale`, in order of first appearance; one table if absent):
    each change against its study's reference, best first. The verdict follows the official loss, or the
    full-coverage loss where the change moves what the official spans score; `noise` (per row) is the seed
    std of that row's scale, if measured, and a difference inside it is marked."""
    scales = found["scale"].tolist() if "scale" in found else ["every scale"] * len(found)
    parts = [say("findings.intro", no_change=NO_CHANGE)]
    for i, scale in enumerate(dict.fromkeys(scales)):
        sub = found[[s == scale for s in scales]].sort_values("judged_delta")
        rows = []
        for r in sub.itertuples():
            verdict = r.verdict
            if r.judged_on == "full coverage":
                verdict += say("findings.full_coverage", coverage=r.coverage,
                               reference_coverage=r.reference_coverage)
            elif (getattr(r, "noise", None) and not is_nan(r.noise)
                  and abs(r.loss - r.reference_loss) < 2 * r.noise):
                verdict = say("findings.noise")   # not called "helped" or "did not help"
            rows.append({"change": r.change, "study": r.study, "against": r.reference,
                         "official": f"{fmt_loss(r.loss)} vs {fmt_loss(r.reference_loss)}",
                         "official change": f"{r.delta:+.2%}",
                         "full-coverage change": "" if is_nan(r.full_delta) else f"{r.full_delta:+.2%}",
                         "seeds": str(r.seeds), "verdict": verdict})
        parts.append(md_table(pd.DataFrame(rows), "lllrrrrl") if rows else say("findings.none"))
        parts.append(say("findings.caption", scale=scale, i=i + 1))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- paragraphs
def edges_md(sweep: pd.DataFrame | None, axis: str = "lr") -> str:
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
        return say("sweep_edge", axis=axis, best=best, end=end, tried=tried)
    return say("sweep_inside", axis=axis, best=best, tried=tried)


def _machine_note(final: pd.Series, base: pd.Series) -> str:
    """`<CPU model>, <precision>; the baseline: <CPU model>, <precision>` where the final run trained on another
    kind of processor or in another precision than the baseline (two kinds of 2-core CPU give the 60-minute
    budget different compute); empty where both are the same. The model is the hardware text before its
    parenthesis, so threads or a torch version do not count as another machine."""
    def kind(row: pd.Series) -> tuple[str, str] | None:
        hw, prec = row.get("hardware"), row.get("precision")
        return (hw.split(" (")[0], prec) if isinstance(hw, str) and isinstance(prec, str) else None
    a, b = kind(final), kind(base)
    if a is None or b is None or a == b:
        return ""
    return f"{a[0]}, {a[1]}; the baseline: {b[0]}, {b[1]}"


def summary_md(n: dict, final: pd.Series, base: pd.Series) -> str:
    """The summary's paragraph: baseline, last rung, its seeds, the best rungs, whether it is official."""
    f, prof, fs = n["formatted"], n["profile"], n.get("final_seeds")
    what = {r["rung"]: r["what"] for r in LADDER}.get(n["final_stage"])
    over = (n.get("final_device") == "cpu" and prof == "full"
            and (n["final"].get("wall_time_s") or 0) > CPU_BUDGET_S)
    notes = [_machine_note(final, base), say("summary.over_budget", budget=CPU_BUDGET_S // 60) if over else ""]
    notes = [x for x in notes if x]
    s = [say("summary.published", published=PUBLISHED_BASELINE)] if prof == "full" else []
    s.append(say("summary.main", **f, profile=prof, scale=TEXT["summary"]["scale"][prof], n_runs=n["n_runs"],
                 where=(f" (on the {DEVICE_NAME.get(n['baseline_device'], '?')})" if n.get("ratio_provisional")
                        else ""),
                 final_stage=n["final_stage"], what=f", {what}," if what else "",
                 wall=fmt_time(n["final"]["wall_time_s"]), device=DEVICE_NAME.get(n.get("final_device"), "?"),
                 notes=f" ({'; '.join(notes)})" if notes else ""))
    if fs:
        text = say("summary.seeds", n=fs["n"], mean=fmt_loss(fs["mean"]), std=fmt_loss(fs["std"]),
                   ratio=fmt_ratio(fs["ratio"]), fastest=fmt_time(fs["wall_min_s"]),
                   slowest=fmt_time(fs["wall_max_s"]))
        if fs["over_budget"] and n.get("final_device") == "cpu":
            text += say("summary.seeds_over_budget", **fs)
            if fs.get("tps_min") is not None:   # the same steps at different speeds: the machine, not the recipe
                text += say("summary.seeds_speeds", **fs, slower=fs["tps_max"] / fs["tps_min"])
        s.append(text + ".")
    rfc = n.get("ratio_full_coverage")
    if rfc is not None and not is_nan(rfc):
        s.append(say("summary.full_coverage", ratio=fmt_ratio(rfc)))
    if n["time_to_baseline_s"] is not None:
        s.append(say("summary.time_to_baseline", time=fmt_time(n["time_to_baseline_s"])))
    for key in ("best_single", "best_in_budget"):
        b = n.get(key)
        if b and b["rung"] != n["final_stage"]:
            s.append(say("summary.best", **dict(b, loss=fmt_loss(b["loss"]), ratio=fmt_ratio(b["ratio"])),
                         who=say(f"summary.{key}"), time=fmt_time(b["wall_time_s"])))
    official = final.get("official")
    official = bool(official) if official is not None and not is_nan(official) else False
    s.append(say("summary.official" if official else "summary.not_official"))
    return " ".join(s) + "\n"


def setup_md(results: pd.DataFrame, base: pd.Series, profile: str) -> str:
    """What the runs ran on: data, hardware, precision, profile, code versions, paused runs."""
    src = ledger.read_json(Path(base["dir"]) / "config.json").get("data_source", {})
    name = src.get("name") or Path(src.get("path", "?")).name
    kind = "hub" if src.get("kind") == "hub" else "standin" if src.get("sha256") == STANDIN_SHA256 else "other"
    text = say("setup.list", titles=base["num_titles"], val_frac=base["val_frac"], profile=profile,
               data=say(f"setup.{kind}", dataset=src.get("dataset"), name=name, sha=STANDIN_SHA256[:12]),
               hardware="; ".join(sorted(set(results["hardware"].dropna()))),
               precision=", ".join(sorted(results["precision"].dropna().unique())),
               finished=int((results["status"] == "finished").sum()))
    paused = results[results["paused_s"] > 0] if "paused_s" in results else results.iloc[:0]
    if len(paused):
        text += say("setup.paused", n=len(paused), runs_were="runs were" if len(paused) > 1 else "run was",
                    time=fmt_time(paused["paused_s"].sum()), gap_min=PAUSE_GAP_S / 60)
    return text


def code_versions_md(results: pd.DataFrame) -> str:
    """Runs whose code version is not one clean commit: a segment with no recorded commit, uncommitted
    changes to mainrun/ (marked *), or resumes under several commits (each summary's code_history)."""
    groups: dict[str, list[str]] = {}
    for r in results[results["status"] == "finished"].itertuples():
        hist = (ledger.read_json(Path(r.dir) / "summary.json") or {}).get("code_history") or []
        if len(hist) == 1 and hist[0].get("git_commit") and hist[0].get("git_dirty") is False:
            continue
        seg = [c["git_commit"][:7] + ("*" if c.get("git_dirty") else "") if c.get("git_commit")
               else "no recorded commit" for c in hist] or ["no recorded commit"]
        groups.setdefault(" then ".join(seg), []).append(r.run)
    if not groups:
        return say("setup.one_commit")
    parts = [(", ".join(f"`{n}`" for n in runs) if len(runs) <= 2 else f"{len(runs)} runs (`{runs[0]}`, ...)")
             + f": {hist}" for hist, runs in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return say("setup.code_versions", groups="; ".join(parts))


def baselines_md(n: dict, results: pd.DataFrame) -> str:
    """The baselines of two kinds of device. Where the final run's device has no finished baseline yet the
    ratio is provisional: how far that baseline has come (its curve against the one used: n["curve_agreement"]).
    Where both finished: how far apart they are (n["baseline_agreement"])."""
    dev = lambda d: DEVICE_NAME.get(d, d)   # noqa: E731
    run_dir = lambda h: results.loc[results["hash"] == h, "dir"].iloc[0]   # noqa: E731  (local paths)
    base = n["baseline"]
    if n["ratio_provisional"]:
        pend, fin = n["pending_baseline"], dev(n["final_device"])
        s = [say("summary.provisional", final=fin, other=DEVICE_NAME.get(n["baseline_device"], "?"),
                 run=base["run"], loss=fmt_loss(base["final_val_loss"]))]
        if pend:
            agree = curve_agreement(run_dir(pend["hash"]), run_dir(base["hash"]))
            s.append(say("summary.pending", final=fin, run=pend["run"], last_step=pend["last_step"],
                         max_steps=pend["max_steps"], loss=fmt_loss(pend["last_val_loss"]),
                         step=pend["last_val_step"]))
            if agree:
                n["curve_agreement"] = agree
                s.append(say("summary.pending_agrees", **agree, final=fin))
        return "\n" + " ".join(s) + "\n"
    bases = results[results["is_baseline"]]
    if len(bases) < 2:
        return ""
    ref, other = bases[bases["hash"] == base["hash"]].iloc[0], bases[bases["hash"] != base["hash"]].iloc[0]
    s = [say("summary.two_baselines", ref=f"{dev(ref['device'])} ({ref['precision']})",
             other=f"{dev(other['device'])} ({other['precision']})", loss=fmt_loss(other["final_val_loss"]),
             delta=other["final_val_loss"] / ref["final_val_loss"] - 1)]
    agree = curve_agreement(ref["dir"], other["dir"])
    if agree:
        n["baseline_agreement"] = agree
        s.append(say("summary.two_baselines_agree", **agree))
    return "\n" + " ".join(s + [say("summary.two_baselines_end")]) + "\n"
