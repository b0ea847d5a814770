"""The report's generated text: the results, ladder and changes tables, and the short paragraphs whose
wording follows the data (the summary, setup, findings, sweep edges, code versions, the baselines on two
devices). Each function returns a string or a table and writes nothing (`report_inputs` writes them).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import ledger
from .config import STANDIN_SHA256, make_config
from .formats import fmt_bpc, fmt_int, fmt_loss, fmt_ratio, fmt_time, is_nan, md_table
from .tables import PAUSE_GAP_S
from .studies import by_point
from .presets import LADDER
from .stats import NO_CHANGE, curve_agreement

PROXY_NOTE = {
    "full": "",
    "quick": ("These are **quick-profile proxy results**: a 2-layer, 64-wide model on 10,000 titles, "
              "for studying the same questions at CPU scale. They rank ideas; they are not Mainrun numbers."),
    "smoke": ("These are **smoke-profile results**: a seconds-long pipeline check on a 1-layer, 32-wide model. "
              "They prove the machinery works and carry no evidence about which idea is better."),
}

DEVICE_NAME = {"cpu": "CPU", "cuda": "GPU"}
# The project's own budget (the Mainrun rules fix the epochs, not the time): a candidate's 7 epochs in 60 minutes
# on a 2-core CPU, so that a candidate and its extra seeds train within a working session on these machines.
CPU_BUDGET_S = 3600
PUBLISHED_BASELINE = 1.7533   # Mainrun's published baseline loss, on the hub dataset


# ----------------------------------------------------------------------------- markdown
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
    if not is_nan(row.get("final_val_loss")) and row.get("final_val_loss") is not None:
        return fmt_loss(row["final_val_loss"])
    if row.get("status") == "incomplete" and not is_nan(row.get("last_val_loss")) and row.get("last_val_loss") is not None:
        return f"training: {fmt_loss(row['last_val_loss'])} at step {int(row['last_val_step'])}"
    return "n/a"


def ladder_table(ladder: pd.DataFrame) -> pd.DataFrame:
    prev = ladder["final_val_loss"].shift(1)
    return pd.DataFrame({
        "stage": ladder["stage"], "run": ladder["label"],
        "official loss": [_loss_or_progress(r) for _, r in ladder.iterrows()],
        "vs previous": [("" if is_nan(p) or is_nan(x) else f"{x / p - 1:+.1%}") for x, p in zip(ladder["final_val_loss"], prev)],
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
        return (f"The `{axis}` sweep's best value, {best:g}, is the {end} value tried ({tried}): the grid was widened "
                f"beyond that edge as far as the study allows and the best still sits on it, so a value further out "
                f"may do better on the proxy.\n")
    return f"The `{axis}` sweep's best value, {best:g}, lies inside the grid ({tried}).\n"


def findings_md(found: pd.DataFrame) -> str:
    """What worked, one table per scale (the column `scale`, in order of first appearance; one table if absent):
    each change against its study's reference, best first. The verdict follows the official loss, or the
    full-coverage loss where the change moves what the official spans score; `noise` (per row) is the seed
    std of that row's scale, if measured, and a difference inside it is marked."""
    scales = found["scale"].tolist() if "scale" in found else ["every scale"] * len(found)
    parts = [f"Each change against its study's reference point at the same scale, best first (official loss; "
             f"mean over seeds where a point has several). A change under {NO_CHANGE:.1%} counts as no change.\n"]
    for i, scale in enumerate(dict.fromkeys(scales)):
        sub = found[[s == scale for s in scales]].sort_values("judged_delta")
        rows = []
        for r in sub.itertuples():
            verdict = r.verdict
            if r.judged_on == "full coverage":
                verdict += (f", judged on the full-coverage loss (the official spans score {r.coverage:.1%} of its "
                            f"validation tokens against {r.reference_coverage:.1%})")
            elif getattr(r, "noise", None) and not is_nan(r.noise) and abs(r.loss - r.reference_loss) < 2 * r.noise:
                verdict = "inside the noise (under 2 seed std)"   # not called "helped" or "did not help"
            rows.append({"change": r.change, "study": r.study, "against": r.reference,
                         "official": f"{fmt_loss(r.loss)} vs {fmt_loss(r.reference_loss)}",
                         "official change": f"{r.delta:+.2%}",
                         "full-coverage change": "" if is_nan(r.full_delta) else f"{r.full_delta:+.2%}",
                         "seeds": str(r.seeds), "verdict": verdict})
        parts.append(md_table(pd.DataFrame(rows), "lllrrrrl") if rows else "No one-change study at this scale.\n")
        parts.append(f": What worked and what did not, {scale}. {{#tbl-findings-{i + 1}}}\n")
    return "\n".join(parts)


def _machine_note(final: pd.Series, base: pd.Series) -> str:
    """`<CPU model>, <precision>; the baseline: <CPU model>, <precision>` where the final run trained on another
    kind of processor or in another precision than the baseline (two kinds of 2-core CPU give the 60-minute
    budget different compute); empty where both are the same. The model is the hardware text before its parenthesis
    (`results.hardware_text`), so threads or a torch version do not count as another machine."""
    def kind(row: pd.Series) -> tuple[str, str] | None:
        hw, prec = row.get("hardware"), row.get("precision")
        return (hw.split(" (")[0], prec) if isinstance(hw, str) and isinstance(prec, str) else None
    a, b = kind(final), kind(base)
    if a is None or b is None or a == b:
        return ""
    return f"{a[0]}, {a[1]}; the baseline: {b[0]}, {b[1]}"


def _parenthesis(*parts: str) -> str:
    """The non-empty parts in one parenthesis, `(a; b)` after a space, or nothing."""
    parts = tuple(p for p in parts if p)
    return f" ({'; '.join(parts)})" if parts else ""


def summary_md(n: dict, final: pd.Series, base: pd.Series) -> str:
    f = n["formatted"]
    prof = n["profile"]
    scale = {"full": "under the Mainrun rules", "quick": "at the quick (CPU proxy) scale",
             "smoke": "at the smoke (pipeline check) scale"}[prof]
    where = f" (on the {DEVICE_NAME.get(n['baseline_device'], '?')})" if n.get("ratio_provisional") else ""
    what = {r["rung"]: r["what"] for r in LADDER}.get(n["final_stage"])
    s = (f"Mainrun's published baseline reaches {PUBLISHED_BASELINE} on the hub dataset; this project trains on an "
         "offline stand-in of Hacker News titles, so every ratio here is to its own reproduced baseline. "
         if prof == "full" else "")
    s += (f"Profile **{prof}**, {scale}: the reproduced baseline{where} reaches an official validation loss of "
         f"**{f['baseline_loss']}** ({f['baseline_bpc']} bits/char over the full validation text). "
         f"The last rung of the ladder, *{n['final_stage']}*" + (f", {what}," if what else "")
         + f" reaches **{f['final_loss']}** "
         f"({f['final_bpc']} bits/char) in {fmt_time(n['final']['wall_time_s'])} of wall time on the "
         f"{DEVICE_NAME.get(n.get('final_device'), '?')}"
         + _parenthesis(_machine_note(final, base),
                        f"over the {CPU_BUDGET_S // 60}-minute budget of a 2-core CPU run that the project holds its "
                        f"final configurations to" if n.get("final_device") == "cpu" and prof == "full"
                        and (n["final"].get("wall_time_s") or 0) > CPU_BUDGET_S else "")
         + f": a ratio of **{f['ratio']}** to the baseline, over {n['n_runs']} recorded runs.")
    fs = n.get("final_seeds")
    if fs:
        s += (f" Over its {fs['n']} training seeds the official loss is {fmt_loss(fs['mean'])} ± {fmt_loss(fs['std'])} "
              f"(ratio {fmt_ratio(fs['ratio'])}); the runs took {fmt_time(fs['wall_min_s'])} to "
              f"{fmt_time(fs['wall_max_s'])}")
        if fs["over_budget"] and n.get("final_device") == "cpu":
            s += f", {fs['over_budget']} of them over the budget"
            if fs.get("tps_min") is not None:   # the same steps at different speeds: the machine, not the recipe
                s += (f"; they trained the same steps at {fs['tps_min']:,.0f} to {fs['tps_max']:,.0f} tokens/s, so "
                      f"the slowest took {fs['tps_max'] / fs['tps_min']:.2f}x the fastest's time a step")
        s += "."
    rfc = n.get("ratio_full_coverage")
    if rfc is not None and not is_nan(rfc):
        s += f" On the full-coverage loss, which scores every validation token, the ratio is {fmt_ratio(rfc)}."
    if n["time_to_baseline_s"] is not None:
        s += f" It first beats the baseline's final loss after {fmt_time(n['time_to_baseline_s'])} of training."
    official = final.get("official")
    official = bool(official) if official is not None and not is_nan(official) else False
    for key, words in (("best_single", "The best single model"),
                       ("best_in_budget", "The best run within the budget on the baseline's CPU")):
        b = n.get(key)
        if b and b["rung"] != n["final_stage"]:
            s += (f" {words} is *{b['rung']}* ({fmt_loss(b['loss'])}, ratio {fmt_ratio(b['ratio'])}, "
                  f"{fmt_time(b['wall_time_s'])} on the {b['hardware']} in {b['precision']}).")
    s += (" The final run is official by this project's rules check (seed, epochs, split and evaluation as the "
          "rules fix them), on the stand-in dataset." if official else
          " The final run is not official under the Mainrun rules (profile or seed differs from them), "
          "so it supports no headline claim.")
    return s + "\n"


def setup_md(results: pd.DataFrame, base: pd.Series, profile: str) -> str:
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
    text += ("- *Code versions.* Every run records the commit it ran (and whether the tree was dirty); the list is "
             "`code-versions.md` beside this analysis.\n")
    paused = results[results["paused_s"] > 0] if "paused_s" in results else results.iloc[:0]
    if len(paused):
        text += (f"- *Paused runs.* {len(paused)} run{'s were' if len(paused) > 1 else ' was'} stopped (SIGSTOP) "
                 f"for {fmt_time(paused['paused_s'].sum())} in all while other runs or benchmarks needed the cores; "
                 f"wall times, tokens/s, curves against time and the time-to-quality leave those stretches out "
                 f"(a step or an evaluation that took over {PAUSE_GAP_S / 60:.0f} min). Other runs that shared "
                 f"the cores without a pause show the slower wall time they had.\n")
    return text


def code_versions_md(results: pd.DataFrame) -> str:
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


def baselines_md(n: dict, results: pd.DataFrame) -> str:
    """Where the baseline was reproduced on two kinds of device: how far apart the two runs are."""
    bases = results[results["is_baseline"]]
    if n["ratio_provisional"] or len(bases) < 2:
        return ""
    ref = bases[bases["hash"] == n["baseline"]["hash"]].iloc[0]
    other = bases[bases["hash"] != ref["hash"]].iloc[0]
    name = lambda r: f"{DEVICE_NAME.get(r['device'], r['device'])} ({r['precision']})"
    text = (f"\nThe baseline was reproduced on two kinds of device: on the {name(ref)} (the reference above) and on "
            f"the {name(other)} (official loss {fmt_loss(other['final_val_loss'])}, "
            f"{other['final_val_loss'] / ref['final_val_loss'] - 1:+.2%}).")
    agree = curve_agreement(ref["dir"], other["dir"])
    if agree:
        n["baseline_agreement"] = agree
        text += (f" Over the {agree['evaluations']} evaluations both logged their official losses differ by at "
                 f"most {agree['max_abs_diff']:.4f}.")
    return text + " Each device's runs are compared with its own baseline.\n"


def provisional_md(n: dict, results: pd.DataFrame) -> str:
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
