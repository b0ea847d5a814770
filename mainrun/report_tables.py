"""The report's tables over one-change studies, generic: which studies they read is data (report/studies.yml,
passed in as `spec` dicts), never named here. Each function returns (markdown with a neutral caption, numbers)
or a frame; the prose that interprets them is written by hand in report/report.qmd, with the numbers as
variables. Nothing here trains.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from .config import make_config
from .formats import is_nan, fmt_loss, fmt_ratio, md_table
from .stats import (agreement, fold_seed_labels, permutation_p, relative_cost, study_effects,
                    truncation_agreement)
from .tables import points_of, read_curve, study_frame


def screen_frame(recs: dict[str, dict], results: pd.DataFrame, studies: list[str],
                 leave_out_prefix: str | None = None) -> pd.DataFrame:
    """Several study records read as one one-change study: extra seeds ("<label>-s<seed>") under their point's
    label, each run once; labels starting with `leave_out_prefix` (runs of another kind) left out."""
    frames = [study_frame(recs[k], results) for k in studies if k in recs]
    if not frames:
        return pd.DataFrame()
    f = pd.concat(frames, ignore_index=True)
    if leave_out_prefix:
        f = f[~f["label"].str.startswith(leave_out_prefix)]
    return fold_seed_labels(f).drop_duplicates("hash").reset_index(drop=True)


def findings(recs: dict[str, dict], results: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Every single change against its study's reference point: each recorded study that is not a screen,
    a search or listed in spec["not_findings"] against its first point; each screen of spec["screens"]
    against its named reference. Column `noise`: the reference's own seed std where it has seeds."""
    in_screens = {s for sc in spec.get("screens", []) for s in sc["studies"]}
    rows = []
    for name, rec in recs.items():
        if (name in spec.get("not_findings", []) or name in in_screens
                or any(r.get("axis") == "search" for r in rec["rows"])):
            continue
        ref = rec["rows"][0]["label"] if rec["rows"] else None
        rows += [dict(r, noise=None) for r in study_effects(name, study_frame(rec, results), ref, results)]
    for sc in spec.get("screens", []):
        f = screen_frame(recs, results, sc["studies"], sc.get("leave_out_prefix"))
        if len(f):   # noise: the reference's own seed spread, where it has seeds
            ref = f.loc[(f["label"] == sc["reference"]) & (f["status"] == "finished"), "final_val_loss"]
            sd = float(ref.std()) if len(ref) > 1 else None
            rows += [dict(r, noise=sd) for r in study_effects(sc["name"], f, sc["reference"], results)]
    cols = ["study", "change", "reference", "loss", "reference_loss", "delta", "seeds", "verdict", "device",
            "full_delta", "coverage", "reference_coverage", "judged_on", "judged_delta", "noise"]
    return pd.DataFrame(rows, columns=cols)


def seed_table(screen: pd.DataFrame, ref: str, labels: list[str], base_loss: float) -> tuple[str, dict]:
    """Candidates repeated over seeds in one screen: mean, std, range, difference to the reference and the
    exact permutation p, ratio to `base_loss`."""
    ok = screen[screen["status"] == "finished"]
    r = ok.loc[ok["label"] == ref, "final_val_loss"].tolist()
    rows, info = [], {}
    for label in labels:
        xs = ok.loc[ok["label"] == label, "final_val_loss"].tolist()
        if not xs:
            continue
        s = pd.Series(xs)
        p = permutation_p(xs, r) if label != ref else None
        delta = float(s.mean() - pd.Series(r).mean()) if r else None
        info[label] = {"n": len(xs), "mean": float(s.mean()), "std": float(s.std()) if len(xs) > 1 else None,
                       "delta": delta, "p": p, "ratio": float(s.mean() / base_loss)}
        rows.append({"candidate": label, "seeds": str(len(xs)), "mean loss": fmt_loss(s.mean()),
                     "std": fmt_loss(s.std()) if len(xs) > 1 else "",
                     "range": f"{fmt_loss(s.min())} to {fmt_loss(s.max())}",
                     f"vs {ref}": "" if label == ref or delta is None else f"{delta:+.4f}",
                     "p": "" if p is None else f"{p:.2f}", "ratio": fmt_ratio(s.mean() / base_loss)})
    md = md_table(pd.DataFrame(rows), "lrrrrrrr") if rows else ""
    return md, info


def test_table(results: pd.DataFrame, tests: pd.DataFrame, base: pd.Series,
               groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per candidate (mean over its seeds' runs): validation ratio, and test ratio on each set, all to the
    same baseline run's loss on the same text; the gap says how much of the validation gain is selection."""
    def loss_of(hashes: list[str], kind: str, col: str = "official") -> float:
        t = tests[(tests["hash"].isin(hashes)) & (tests["test_set"] == kind)]
        return float(t[col].mean()) if len(hashes) and len(t) == len(hashes) else float("nan")

    def ratio(hashes: list[str], kind: str, col: str = "official") -> str:   # "" where either side is missing
        x, xb = loss_of(hashes, kind, col), loss_of([base["hash"]], kind, col)
        return "" if is_nan(x) or is_nan(xb) else fmt_ratio(x / xb)
    rows = []
    for label, hashes in groups.items():
        val = results.loc[results["hash"].isin(hashes), "final_val_loss"].mean()
        rows.append({"candidate": label, "runs": str(len(hashes)), "validation": fmt_loss(val),
                     "val ratio": fmt_ratio(val / base["final_val_loss"]),
                     "test:random": fmt_loss(loss_of(hashes, "random")), "random ratio": ratio(hashes, "random"),
                     "test:late": fmt_loss(loss_of(hashes, "late")), "late ratio": ratio(hashes, "late"),
                     "random ratio, full coverage": ratio(hashes, "random", "full")})
    return pd.DataFrame(rows)


def cpu_groups(runs: pd.DataFrame) -> dict[str, list[str]]:
    """{"<point> (CPU)": hashes}: a point's seeds (runs named "<point>-seed<N>") are one row of the test table."""
    groups: dict[str, list[str]] = {}
    for r in runs.itertuples():
        parts = re.sub(r"-seed[0-9]+$", "", r.run).split("-")   # <profile>-<study>-<point>, or <profile>-<preset>
        groups.setdefault(f"{'-'.join(parts[2:]) or parts[-1]} (CPU)", []).append(r.hash)
    return groups


def stack_table(recs: dict[str, dict], results: pd.DataFrame, spec: dict, base_loss: float) -> tuple[str, dict]:
    """A stack over seeds against its reference's seeds (difference, exact p), and the stack less one member
    at a time ("<label>-minus-<knob>", one seed each: against the stack's mean and against the stack's run with
    the same seed). spec: {study, label, reference: {study, label}}."""
    ref_spec = spec["reference"]
    if spec["study"] not in recs or ref_spec["study"] not in recs:
        return "", {}
    st = fold_seed_labels(study_frame(recs[spec["study"]], results))
    rf = fold_seed_labels(study_frame(recs[ref_spec["study"]], results))
    st, rf = st[st["status"] == "finished"], rf[rf["status"] == "finished"]
    ref = rf.loc[rf["label"] == ref_spec["label"], "final_val_loss"].tolist()
    stack = st.loc[st["label"] == spec["label"], "final_val_loss"].tolist()
    if len(ref) < 2 or len(stack) < 2:
        return "", {}
    r, k = pd.Series(ref), pd.Series(stack)
    p = permutation_p(stack, ref)
    members = {kk: v for kk, v in st.loc[st["label"] == spec["label"], "overrides"].iloc[0].items()
               if kk != "train_seed"}
    rows = [{"runs": ref_spec["label"], "seeds": str(len(r)), "loss": fmt_loss(r.mean()), "std": fmt_loss(r.std()),
             "against": "", "difference": "", "same seed": "", "p": "", "ratio": fmt_ratio(r.mean() / base_loss)},
            {"runs": spec["label"], "seeds": str(len(k)), "loss": fmt_loss(k.mean()), "std": fmt_loss(k.std()),
             "against": ref_spec["label"], "difference": f"{k.mean() - r.mean():+.4f}", "same seed": "",
             "p": f"{p:.2f}", "ratio": fmt_ratio(k.mean() / base_loss)}]
    by_seed = st[st["label"] == spec["label"]].set_index("seed")["final_val_loss"]
    minus, paired = {}, {}
    prefix = f"{spec['label']}-minus-"
    for row in st[st["label"].str.startswith(prefix)].itertuples():
        name = row.label.removeprefix(prefix)
        minus[name] = float(row.final_val_loss - k.mean())
        paired[name] = float(row.final_val_loss - by_seed[row.seed]) if row.seed in by_seed.index else math.nan
        rows.append({"runs": row.label, "seeds": "1", "loss": fmt_loss(row.final_val_loss), "std": "",
                     "against": spec["label"], "difference": f"{minus[name]:+.4f}",
                     "same seed": "" if is_nan(paired[name]) else f"{paired[name]:+.4f}", "p": "",
                     "ratio": fmt_ratio(row.final_val_loss / base_loss)})
    numbers = {"reference_mean": float(r.mean()), "reference_std": float(r.std()), "mean": float(k.mean()),
               "std": float(k.std()), "delta": float(k.mean() - r.mean()), "p": p, "members": members,
               "minus": minus, "minus_same_seed": paired, "separated": bool(max(stack) < min(ref))}
    return md_table(pd.DataFrame(rows), "lrrrlrrrr"), numbers


def by_cost(rec: dict, results: pd.DataFrame, base_loss: float, ref_label: str) -> tuple[str, dict]:
    """A screen's points by compute: each point's matmul cost against its reference's (`relative_cost`), its
    mean over seeds, the difference to the reference's seed mean and, with two seeds or more, the exact
    permutation p; sorted by cost then loss. Empty where the reference has fewer than two seeds."""
    f = fold_seed_labels(study_frame(rec, results))
    f = f[f["status"] == "finished"]
    base = {k: v for k, v in rec["specs"][-1]["base"].items() if k != "preset"}
    preset = rec["specs"][-1]["base"].get("preset", "baseline")
    ref_cfg = make_config("full", preset, **base)
    ref = f.loc[f["label"] == ref_label, "final_val_loss"].tolist()
    if len(ref) < 2:
        return "", {}
    rm = sum(ref) / len(ref)
    rows, pts = [], {}
    for label, g in f.groupby("label", sort=False):
        ov = {k: v for k, v in g["overrides"].iloc[0].items() if k != "train_seed"}
        cost = relative_cost(make_config("full", preset, **{**base, **ov}), ref_cfg)
        v = g["final_val_loss"].tolist()
        m = sum(v) / len(v)
        p = permutation_p(v, ref) if label != ref_label else None
        pts[label] = {"cost": cost, "mean": m, "seeds": len(v), "delta": m - rm, "p": p, "ratio": m / base_loss,
                      "std": float(pd.Series(v).std()) if len(v) > 1 else None, "overrides": ov}
        rows.append({"change": label, "cost": f"{cost:.2f}x", "parameters": f"{g['n_params'].iloc[0] / 1e6:.2f}M",
                     "seeds": str(len(v)), "loss": fmt_loss(m),
                     "std": f"{pd.Series(v).std():.4f}" if len(v) > 1 else "",
                     "difference": "" if label == ref_label else f"{m - rm:+.4f}",
                     "p": "" if p is None else f"{p:.2f}", "ratio": fmt_ratio(m / base_loss)})
    t = pd.DataFrame(rows)
    t = t.assign(_c=[pts[r]["cost"] for r in t["change"]],
                 _m=[pts[r]["mean"] for r in t["change"]]).sort_values(["_c", "_m"]).drop(columns=["_c", "_m"])
    return md_table(t, "lrrrrrrrr"), {"reference": ref_label, "points": pts}


def agreement_table(screen: pd.DataFrame, proxies: dict[str, pd.DataFrame], ref: str) -> tuple[str, dict]:
    """One change at two scales: each proxy study's deltas beside the screen's, whether the signs agree, and
    whether the full-scale effect is beyond twice its reference's seed std. The changes are those the proxy
    studies made (their labels other than the reference and its seeds)."""
    sign = {True: "yes", False: "no"}
    out, numbers = None, {}
    for name, frame in proxies.items():
        changes = [c for c in dict.fromkeys(fold_seed_labels(frame)["label"]) if c != ref]
        table, s = agreement(screen, frame, changes, ref)
        if table.empty:
            continue
        numbers[name] = dict(s)
        t = table.set_index("change")
        if out is None:
            out = pd.DataFrame({"change": table["change"], "full scale": table["full"].map(lambda x: f"{x:+.4f}")})
            clear = t["full_clear"]
        out[name] = [f"{t.loc[c, 'quick']:+.4f}" if c in t.index else "" for c in out["change"]]
        out[f"same sign ({name})"] = [sign[bool(t.loc[c, "same_sign"])] if c in t.index else ""
                                      for c in out["change"]]
    if out is None:
        return "", {}
    out["beyond 2 std at full scale"] = [sign[bool(clear[c])] for c in out["change"]]
    return md_table(out, "lr" + "rl" * len(numbers) + "l"), numbers


def truncation_table(screen: pd.DataFrame, results: pd.DataFrame, ref: str, skip: list[str]) -> tuple[str, dict]:
    """Does stopping a screen's runs early rank the changes as their ends do? (`stats.truncation_agreement`)."""
    ri = results.drop_duplicates("hash").set_index("hash")
    curves = {h: read_curve(ri.loc[h, "dir"]).assign(epochs=ri.loc[h, "epochs"], max_steps=ri.loc[h, "max_steps"],
                                                     evals_per_epoch=ri.loc[h, "evals_per_epoch"])
              for h in screen["hash"] if h in ri.index and isinstance(ri.loc[h, "dir"], str)}
    table, s = truncation_agreement(screen, curves, ref, tuple(skip))
    if table.empty:
        return "", {}
    t = pd.DataFrame({"epoch": table["epoch"].map(lambda x: f"{x:g}"),
                      "share of the run": table["fraction"].map(lambda x: f"{x:.0%}"),
                      "pairs": table["pairs"].astype(str),
                      "same sign": table["sign_agreement"].map(lambda x: f"{x:.0%}"),
                      "same sign, clear": table["clear_sign_agreement"].map(
                          lambda x: "" if is_nan(x) else f"{x:.0%}"),
                      "Spearman": table["spearman"].map(lambda x: f"{x:.2f}")})
    numbers = {k: v for k, v in s.items() if k not in ("deltas", "clear")}
    numbers["table"] = table.to_dict(orient="records")
    return md_table(t, "rrrrrr"), numbers


def seed_std(profile: str, results: pd.DataFrame, studies: list[str]) -> float | None:
    """The mean seed std over the points repeated with two or more seeds in `studies` (None if none was)."""
    pts = points_of(profile, results, studies)
    if pts.empty:
        return None
    g = pts.groupby("label")["final_val_loss"]
    stds = g.std(ddof=1)[g.size() >= 2]
    return float(stds.mean()) if len(stds) else None
