"""Past the final configuration (issue 14): the GPU screen's stack over seeds, the held-out test sets and the
quick proxy's agreement with full scale, as the report's markdown (past.md). Reads the ledger; trains nothing.

- `seed_table`: the final preset, attn_dropout=0 and the stack over their seeds on the GPU, each against the
  final preset (difference of means, exact permutation p), as ratios to the GPU baseline;
- `test_table`: every run with a result under results/test/, its validation ratio beside its test ratios;
- `agreement_md`: mainrun.proxy's pairs of one-change deltas at the two scales.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from . import ledger
from .formats import _nan, fmt_loss, fmt_ratio
from .fragments import md_table
from .proxy import (MIRROR_STUDY, PROXY_CHANGES, PROXY_STUDY, agreement, deltas, relative_cost,
                    truncation_agreement)
from .results import read_curve, read_studies, study_frame
from .verdicts import fold_seed_labels, permutation_p, screen_frame

CANDIDATES = ("final", "attn0", "stack")
# what sets the size of an optimizer step: where a smaller model's best value need not be full scale's
STEP_SIZE_KEYS = {"lr", "muon_lr", "embed_lr", "head_lr", "batch_size"}


def read_tests(root: Path) -> pd.DataFrame:
    """One row per saved test-set evaluation (results/test/*.json): hash, test set, official and full loss."""
    rows = []
    for path in sorted((root / "test").glob("*-test-*.json")):
        d = json.loads(path.read_text())
        rows.append({"hash": d["hash"], "run": d["run"], "test_set": (d.get("test") or {}).get("test_set"),
                     "official": d.get("official_loss"), "full": d.get("full_loss"), "coverage": d.get("official_coverage")})
    return pd.DataFrame(rows, columns=["hash", "run", "test_set", "official", "full", "coverage"])


def gpu_baseline(results: pd.DataFrame) -> pd.Series | None:
    b = results[results["is_baseline"] & (results["device"] == "cuda") & (results["status"] == "finished")]
    return b.iloc[0] if len(b) else None


def seed_table(screen: pd.DataFrame, base_loss: float) -> tuple[pd.DataFrame, dict]:
    """The repeated candidates of the screen: mean, std, range, difference to the final preset and p."""
    ok = screen[screen["status"] == "finished"]
    ref = ok.loc[ok["label"] == "final", "final_val_loss"].tolist()
    rows, info = [], {}
    for label in CANDIDATES:
        xs = ok.loc[ok["label"] == label, "final_val_loss"].tolist()
        if not xs:
            continue
        s = pd.Series(xs)
        p = permutation_p(xs, ref) if label != "final" else None
        info[label] = {"n": len(xs), "mean": float(s.mean()), "std": float(s.std()) if len(xs) > 1 else None,
                       "delta": float(s.mean() - pd.Series(ref).mean()) if ref else None, "p": p}
        rows.append({"candidate": label, "seeds": str(len(xs)), "mean loss": fmt_loss(s.mean()),
                     "std": fmt_loss(s.std()) if len(xs) > 1 else "",
                     "range": f"{fmt_loss(s.min())}-{fmt_loss(s.max())}",
                     "vs final": "" if label == "final" else f"{s.mean() - pd.Series(ref).mean():+.4f}",
                     "p": "" if p is None else f"{p:.2f}", "ratio": fmt_ratio(s.mean() / base_loss)})
    return pd.DataFrame(rows), info


def test_table(results: pd.DataFrame, tests: pd.DataFrame, base: pd.Series, groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per candidate (mean over its seeds' runs): validation ratio, and test ratio on each set, all to the
    same baseline run's loss on the same text; the gap says how much of the validation gain is selection."""
    def loss_of(hashes: list[str], kind: str, col: str = "official") -> float:
        t = tests[(tests["hash"].isin(hashes)) & (tests["test_set"] == kind)]
        return float(t[col].mean()) if len(hashes) and len(t) == len(hashes) else float("nan")
    b = [base["hash"]]
    rows = []
    for label, hashes in groups.items():
        val = results.loc[results["hash"].isin(hashes), "final_val_loss"].mean()
        r_val = val / base["final_val_loss"]
        row = {"candidate": label, "runs": str(len(hashes)), "validation": fmt_loss(val), "val ratio": fmt_ratio(r_val)}
        for kind in ("random", "late"):
            x, xb = loss_of(hashes, kind), loss_of(b, kind)
            row[f"test:{kind}"] = fmt_loss(x)
            row[f"{kind} ratio"] = fmt_ratio(x / xb) if not (_nan(x) or _nan(xb)) else ""
        xf, xbf = loss_of(hashes, "random", "full"), loss_of(b, "random", "full")
        row["random ratio, full coverage"] = fmt_ratio(xf / xbf) if not (_nan(xf) or _nan(xbf)) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def cpu_groups(runs: pd.DataFrame) -> dict[str, list[str]]:
    """{"<point> (CPU)": hashes}: a point's seeds (runs named "<point>-seed<N>") are one row of the test table."""
    groups: dict[str, list[str]] = {}
    for r in runs.itertuples():
        groups.setdefault(f"{re.sub(r'-seed[0-9]+$', '', r.run)} (CPU)", []).append(r.hash)
    return groups


def agreement_md(profile: str, screen: pd.DataFrame, proxy: str, proxy_results: pd.DataFrame,
                 results: pd.DataFrame | None = None) -> str:
    """The agreement paragraph and table; `screen` is verdicts.screen_frame(profile, ...). Where the full-data
    small-model mirror (study gpu14_mirror) is in the ledger, its deltas are a second proxy column."""
    recs, precs = read_studies(profile), read_studies(proxy)
    if "gpu14_screen" not in recs or PROXY_STUDY not in precs:
        return ("The quick proxy's mirror of the GPU screen (`mainrun.proxy`, study `14_proxy`) is not in the "
                "ledger yet: no agreement table.\n")
    table, s = agreement(screen, study_frame(precs[PROXY_STUDY], proxy_results))
    if table.empty:
        return "No change was measured at both scales yet.\n"
    sign = {True: "yes", False: "no"}
    t = pd.DataFrame({"change": table["change"], "full scale (GPU)": table["full"].map(lambda x: f"{x:+.4f}"),
                      f"{proxy} proxy (CPU)": table["quick"].map(lambda x: f"{x:+.4f}"),
                      "same sign (quick)": table["same_sign"].map(sign)})
    m = None
    if results is not None and MIRROR_STUDY in recs:
        mt, m = agreement(screen, study_frame(recs[MIRROR_STUDY], results))
        if mt.empty:
            m = None
        else:
            mt = mt.set_index("change")
            t["full data, small model (GPU)"] = [f"{mt.loc[c, 'quick']:+.4f}" if c in mt.index else ""
                                                 for c in table["change"]]
            t["same sign (full data)"] = [sign[bool(mt.loc[c, "same_sign"])] if c in mt.index else ""
                                          for c in table["change"]]
    t["full-scale effect beyond 2 std"] = table["full_clear"].map(sign)
    text = (f"Does the {proxy} proxy rank changes as full scale does? Each change of the GPU screen that means the same "
            f"thing at d64 x 2 layers was made again on the {proxy} proxy, on top of the final recipe "
            f"(`mainrun.proxy`, study `{PROXY_STUDY}`). Over {s['pairs']} pairs the signs agree for "
            f"{s['sign_agreement']:.0%}; for the {s['clear_pairs']} changes whose full-scale effect is beyond twice the "
            f"final preset's seed spread ({s['full_seed_sd']:.4f}) they agree for {s['clear_sign_agreement']:.0%}. "
            f"Spearman's rank correlation of the deltas is {s['spearman']:.2f}. The proxy's own seed spread is "
            f"{s['quick_seed_sd']:.4f} (two seeds of its reference).\n")
    if m is not None:
        flips = [c for c in mt.index if not mt.loc[c, "same_sign"] and mt.loc[c, "full_clear"]]
        better = m["spearman"] > s["spearman"] and m["sign_agreement"] > s["sign_agreement"]
        step = mt.index.isin([c for c in mt.index if set(PROXY_CHANGES.get(c, {})) & STEP_SIZE_KEYS])
        text += (f"\nA second proxy keeps the data and shrinks only the model: the same d64 x 2-layer model on the full "
                 f"100k titles with the final preset's 4k vocabulary, 7 epochs (`proxy.MIRROR_SPEC`, study "
                 f"`{MIRROR_STUDY}`, trained on the GPU). Against the quick proxy it agrees "
                 + ("better" if better else "no better") + ": signs agree for "
                 f"{m['sign_agreement']:.0%} of {m['pairs']} pairs ({m['clear_sign_agreement']:.0%} of the "
                 f"{m['clear_pairs']} clear ones), Spearman {m['spearman']:.2f}, with its own seed spread "
                 f"{m['quick_seed_sd']:.4f}. The clear changes it gets wrong are "
                 + (", ".join(f"`{c}`" for c in flips) or "none")
                 + f". On the learning-rate and batch changes (a learning rate or the batch size) signs agree for "
                 f"{int(mt.loc[step, 'same_sign'].sum())} of {int(step.sum())}, on the others for "
                 f"{int(mt.loc[~step, 'same_sign'].sum())} of {int((~step).sum())}, as expected where the best step "
                 "size moves with the model's width.\n")
    cap = (": One change at several scales: official loss minus the reference's (full scale: the final preset's "
           "3-seed mean on the GPU; proxies: their reference's 2-seed mean). {#tbl-proxy-agreement}\n")
    return "\n".join([text, md_table(t, "lrr" + "l" + ("rl" if m else "") + "l"), cap])


def later_rounds_md(profile: str, results: pd.DataFrame, base_loss: float) -> tuple[str, dict]:
    """The second screen's stack over seeds against final2's, its leave-one-out runs, and the third screen's
    verdict (scripts/gpu_screen2.py; the one-change rows are in the GPU findings table). Paragraph, table, numbers."""
    recs = read_studies(profile)
    if "gpu14_screen2" not in recs or "gpu14_stack2" not in recs:
        return "", {}
    s2 = fold_seed_labels(study_frame(recs["gpu14_screen2"], results))
    st = fold_seed_labels(study_frame(recs["gpu14_stack2"], results))
    s2, st = s2[s2["status"] == "finished"], st[st["status"] == "finished"]
    ref = s2.loc[s2["label"] == "final2", "final_val_loss"].tolist()
    stack = st.loc[st["label"] == "stack", "final_val_loss"].tolist()
    if len(ref) < 2 or len(stack) < 2:
        return "", {}
    r, k = pd.Series(ref), pd.Series(stack)
    p = permutation_p(stack, ref)
    members = {kk: v for kk, v in st.loc[st["label"] == "stack", "overrides"].iloc[0].items() if kk != "train_seed"}
    rows = [{"runs": "final2", "seeds": str(len(r)), "loss": fmt_loss(r.mean()), "std": fmt_loss(r.std()),
             "against": "", "difference": "", "same seed": "", "p": "", "ratio": fmt_ratio(r.mean() / base_loss)},
            {"runs": "stack (preset final3)", "seeds": str(len(k)), "loss": fmt_loss(k.mean()), "std": fmt_loss(k.std()),
             "against": "final2", "difference": f"{k.mean() - r.mean():+.4f}", "same seed": "", "p": f"{p:.2f}",
             "ratio": fmt_ratio(k.mean() / base_loss)}]
    by_seed = st[st["label"] == "stack"].set_index("seed")["final_val_loss"]
    minus, paired = {}, {}
    for row in st[st["label"].str.startswith("stack-minus-")].itertuples():
        name = row.label.removeprefix("stack-minus-")
        minus[name] = float(row.final_val_loss - k.mean())
        paired[name] = float(row.final_val_loss - by_seed[row.seed]) if row.seed in by_seed.index else math.nan
        rows.append({"runs": row.label, "seeds": "1", "loss": fmt_loss(row.final_val_loss), "std": "",
                     "against": "stack", "difference": f"{minus[name]:+.4f}",
                     "same seed": "" if _nan(paired[name]) else f"{paired[name]:+.4f}", "p": "",
                     "ratio": fmt_ratio(row.final_val_loss / base_loss)})
    numbers = {"final2_mean": float(r.mean()), "final2_std": float(r.std()), "stack_mean": float(k.mean()),
               "stack_std": float(k.std()), "delta": float(k.mean() - r.mean()), "p": p, "members": members,
               "minus": minus, "minus_same_seed": paired}
    text = (f"A second screen (`scripts/gpu_screen2.py`, study `gpu14_screen2`) tried {len(set(s2['label'])) - 1} "
            f"more of the issue's ideas, one at a time against `final2` on the GPU (its rows are in the GPU table of "
            f"what worked). The changes beyond twice final2's seed spread (at least 0.001), stacked, are "
            + ", ".join(f"`{kk}={v}`" for kk, v in members.items())
            + f" (preset `final3`). Over {len(k)} seeds the stack reaches {fmt_loss(k.mean())} +- {k.std():.4f} against "
            f"final2's {fmt_loss(r.mean())} +- {r.std():.4f}: {k.mean() - r.mean():+.4f}, exact permutation p = "
            f"{p:.2f}" + (" (every stack seed is below every final2 seed)" if max(stack) < min(ref) else "")
            + ". Taking one member out at a time (one seed each) says how much each carries inside the stack, "
            "against the stack's mean and, in brackets, against the stack's run with the same training seed (the "
            "same initialisation and batch order): "
            + ", ".join(f"`{kk}` {v:+.4f} ({paired[kk]:+.4f})" for kk, v in sorted(minus.items(), key=lambda x: -x[1]))
            + ".")
    if "gpu14_screen3" in recs:
        s3 = study_frame(recs["gpu14_screen3"], results)
        changes = [c for c in s3["label"].unique() if not c.startswith("stack")]
        d3, _, sd3 = deltas(s3, changes, "stack")
        clear = {c: v for c, v in d3.items() if v < -max(2 * sd3, 0.001)}
        best = min(d3.items(), key=lambda x: x[1]) if d3 else None
        ok3 = s3[s3["status"] == "finished"].set_index("label")
        best_paired = (float(ok3.loc[best[0], "final_val_loss"] - by_seed[ok3.loc[best[0], "seed"]])
                       if best and ok3.loc[best[0], "seed"] in by_seed.index else math.nan)
        numbers["third"] = {"changes": len(d3), "clear": clear, "best": best, "reference_std": sd3,
                            "best_same_seed": best_paired}
        text += (f" A third screen (study `gpu14_screen3`, `proxy.SCREEN3`) made {len(d3)} more changes against the "
                 "stack, one seed each: "
                 + (f"{len(clear)} beyond twice the stack's seed spread ({sd3:.4f}): "
                    + ", ".join(f"`{c}` {v:+.4f}" for c, v in clear.items()) if clear else
                    f"none beyond twice the stack's seed spread ({sd3:.4f}, at least 0.001)"
                    + (f"; the best, `{best[0]}`, is {best[1]:+.4f}" if best else "")
                    + ("" if _nan(best_paired) else f" ({best_paired:+.4f} against the stack's run with the same seed)"))
                 + ".")
    md = "\n".join([text + "\n", md_table(pd.DataFrame(rows), "lrrrlrrrr"),
                     ": The second screen's stack (preset `final3`) over its seeds on the GPU against final2's, and "
                     "the stack without each member (one seed: against the stack's mean, and against the stack's run "
                     "with the same seed); ratios to the GPU baseline. {#tbl-stack2}\n"])
    if "gpu14_screen4" in recs:
        fourth, numbers["fourth"] = fourth_screen_md(recs["gpu14_screen4"], results, base_loss)
        md += "\n" + fourth
    if "gpu14_screen5" in recs:
        fifth, numbers["fifth"] = fifth_screen_md(recs["gpu14_screen5"], results, base_loss)
        md += "\n" + fifth
    return md, numbers


def by_cost(rec: dict, results: pd.DataFrame, base_loss: float, ref_label: str
            ) -> tuple[pd.DataFrame, dict, list[float], dict[str, dict]]:
    """A later screen's points by compute: each point's matmul cost against its reference's (proxy.relative_cost),
    its mean over seeds, the difference to the reference's seed mean and, with two seeds or more, the exact
    permutation p; the reference's own entry gives its seed mean and std. (table sorted by cost then loss,
    {label: numbers}, the reference's losses, {label: overrides});
    an empty table where the reference has fewer than two seeds."""
    from .config import make_config
    f = fold_seed_labels(study_frame(rec, results))
    f = f[f["status"] == "finished"]
    base = {k: v for k, v in rec["specs"][-1]["base"].items() if k != "preset"}
    preset = rec["specs"][-1]["base"].get("preset", "baseline")
    ref_cfg = make_config("full", preset, **base)
    ref = f.loc[f["label"] == ref_label, "final_val_loss"].tolist()
    if len(ref) < 2:
        return pd.DataFrame(), {}, ref, {}
    rm = sum(ref) / len(ref)
    rows, pts = [], {}
    overrides = {lb: {k: v for k, v in g["overrides"].iloc[0].items() if k != "train_seed"}
                 for lb, g in f.groupby("label", sort=False)}
    for label, g in f.groupby("label", sort=False):
        cost = relative_cost(make_config("full", preset, **{**base, **overrides[label]}), ref_cfg)
        v = g["final_val_loss"].tolist()
        m = sum(v) / len(v)
        p = permutation_p(v, ref) if label != ref_label else None
        pts[label] = {"cost": cost, "mean": m, "seeds": len(v), "delta": m - rm, "p": p,
                      "std": float(pd.Series(v).std()) if len(v) > 1 else None}
        rows.append({"change": label, "cost": f"{cost:.2f}x", "parameters": f"{g['n_params'].iloc[0] / 1e6:.2f}M",
                     "seeds": str(len(v)), "loss": fmt_loss(m),
                     "std": f"{pd.Series(v).std():.4f}" if len(v) > 1 else "",
                     "difference": "" if label == ref_label else f"{m - rm:+.4f}",
                     "p": "" if p is None else f"{p:.2f}", "ratio": fmt_ratio(m / base_loss)})
    t = pd.DataFrame(rows)
    t = t.assign(_c=[pts[r]["cost"] for r in t["change"]],
                 _m=[pts[r]["mean"] for r in t["change"]]).sort_values(["_c", "_m"]).drop(columns=["_c", "_m"])
    return t, pts, ref, overrides


def fourth_screen_md(rec: dict, results: pd.DataFrame, base_loss: float) -> tuple[str, dict]:
    """The fourth screen (study gpu14_screen4) by compute, against the stack (`by_cost`). Paragraph, table,
    numbers."""
    t, pts, ref, overrides = by_cost(rec, results, base_loss, "stack")
    if t.empty:
        return "", {}
    rm, sd = pts["stack"]["mean"], pts["stack"]["std"]
    numbers = {"stack_mean": rm, "points": pts}
    shape_keys = {"n_layer", "d_model", "n_head", "mlp_mult", "ensemble"}
    iso = {k: v for k, v in pts.items() if abs(v["cost"] - 1) < 0.15 and k != "stack"}
    reshaped = {k: v for k, v in iso.items() if set(overrides[k]) & shape_keys}
    beyond = {k: v for k, v in iso.items() if v["delta"] < -2 * sd}
    best_iso = min(iso.items(), key=lambda x: x[1]["mean"]) if iso else None
    text = (f"A fourth screen (study `gpu14_screen4`, `proxy.SCREEN4`, two device calls) asked where more parameters "
            f"or more compute would go. Against the stack's {len(ref)} seeds ({fmt_loss(rm)} +- {sd:.4f}), the "
            f"shapes and ensembles at about the stack's matmul cost give "
            + ", ".join(f"`{k}` {v['delta']:+.4f}" for k, v in sorted(reshaped.items(), key=lambda x: x[1]["delta"]))
            + f"; {len(beyond)} of the {len(iso)} points at that cost beat the stack by more than twice its seed "
            "spread" + (": " + ", ".join(f"`{k}`" for k in beyond) if beyond else "") + ". ")
    if best_iso:
        text += (f"The best of them is `{best_iso[0]}` ({best_iso[1]['seeds']} seeds, {best_iso[1]['delta']:+.4f}"
                 + ("" if best_iso[1]["p"] is None else f", p = {best_iso[1]['p']:.2f}") + "). ")
    if "ens2" in pts and "d256-L6" in pts:
        e, d = pts["ens2"], pts["d256-L6"]
        text += ((f"Twice the compute buys more as an ensemble than as one larger model: " if e["mean"] < d["mean"]
                  else "Twice the compute buys less as an ensemble than as one larger model: ")
                 + f"two stacks trained side by "
                 f"side and averaged in probability (`ensemble=2`) reach {fmt_loss(e['mean'])} over {e['seeds']} "
                 f"seeds ({e['delta']:+.4f}), one d256 x 6 model ({d['cost']:.2f}x) {fmt_loss(d['mean'])} "
                 f"({d['delta']:+.4f})" + (", as Kim et al. (2025) found for data-limited pre-training. " if e["mean"] < d["mean"]
                                            else ". "))
    if "ens3" in pts:
        e3 = pts["ens3"]
        text += (f"Three stacks ({e3['cost']:.1f}x, {e3['seeds']} seed) reach {fmt_loss(e3['mean'])}, ratio "
                 f"{fmt_ratio(e3['mean'] / base_loss)} to the GPU baseline. On this project's 2-core AVX2 CPU the "
                 "stack alone takes about the whole 60 minutes, so none of these fits the CPU budget there.")
    md = "\n".join([text + "\n", md_table(t, "lrrrrrrrr"),
                     ": The fourth GPU screen by matmul cost per token (relative to the stack, `proxy.relative_cost`): "
                     "mean over seeds, difference to the stack's seed mean and exact permutation p; ratios to the GPU "
                     "baseline. {#tbl-screen4}\n"])
    return md, numbers


def fifth_screen_md(rec: dict, results: pd.DataFrame, base_loss: float) -> tuple[str, dict]:
    """The fifth screen (study gpu14_screen5) by compute, against final4's seeds (`by_cost`): what is left at
    final4's cost, the near-gains stacked, and the ensembles of final4 over seeds. Paragraph, table, numbers."""
    t, pts, ref, overrides = by_cost(rec, results, base_loss, "final4")
    if t.empty:
        return "", {}
    rm, sd = pts["final4"]["mean"], pts["final4"]["std"]
    numbers = {"final4_mean": rm, "final4_std": sd, "points": pts}
    threshold = max(2 * sd, 0.001)   # one bar for a single change and for the stack of the near-gains
    singles = {k: v for k, v in pts.items() if abs(v["cost"] - 1) < 1e-9 and k != "final4"
               and not k.startswith("stack5")}
    beyond = sorted((k for k, v in singles.items() if v["delta"] < -threshold), key=lambda k: singles[k]["delta"])
    ranked = sorted(singles, key=lambda k: singles[k]["delta"])
    text = (f"A fifth screen (study `gpu14_screen5`, `proxy.SCREEN5`, two device calls) went back to the knobs around "
            f"`final4` once weight decay 0.1, two heads and beta1 0.8 were in. Against final4's {len(ref)} GPU seeds "
            f"({fmt_loss(rm)} +- {sd:.4f}), the {len(singles)} one-change points at its cost give "
            + ", ".join(f"`{k}` {singles[k]['delta']:+.4f}" for k in ranked) + "; "
            + (f"{len(beyond)} beyond twice final4's seed spread (at least 0.001): " + ", ".join(f"`{k}`" for k in beyond)
               if beyond else "none beyond twice final4's seed spread (at least 0.001)") + ". ")
    if "stack5" in pts:
        s5 = pts["stack5"]
        members = ", ".join(f"`{k}={v}`" for k, v in overrides["stack5"].items())
        minus = {k.removeprefix("stack5-minus-"): v for k, v in pts.items() if k.startswith("stack5-minus-")}
        text += (f"The {len(overrides['stack5'])} nearest to helping, stacked ({members}), give {fmt_loss(s5['mean'])} "
                 f"over {s5['seeds']} seeds ({s5['delta']:+.4f}"
                 + ("" if s5["p"] is None else f", p = {s5['p']:.2f}") + "): "
                 + ("they do not add up" if s5["delta"] > -threshold else "they add up")
                 + (", and the stack without one of them (one seed each) lies at "
                    + ", ".join(f"`{k}` {v['delta']:+.4f}" for k, v in sorted(minus.items(), key=lambda x: x[1]["delta"]))
                    + " against final4" if minus else "") + ". "
                 + ("So final4 stays the CPU candidate. " if s5["delta"] > -threshold else ""))
    ens = [k for k in ("ens3", "ens2", "ens2-d144", "ens2-d160-L4") if k in pts]
    if ens:
        text += ("Ensembles of final4-like models, trained side by side and averaged in probability: "
                 + "; ".join(f"`{k}` ({pts[k]['cost']:.2f}x, {pts[k]['seeds']} seed{'s' if pts[k]['seeds'] > 1 else ''}) "
                             f"{fmt_loss(pts[k]['mean'])}" + ("" if pts[k]["std"] is None else f" +- {pts[k]['std']:.4f}")
                             + f", {pts[k]['delta']:+.4f}, ratio {fmt_ratio(pts[k]['mean'] / base_loss)}" for k in ens)
                 + ". ")
        low = [k for k in ens if pts[k]["mean"] / base_loss <= 0.63]
        if low:
            costs = ", ".join(f"{pts[k]['cost']:.0f}x" for k in low)
            text += ("Only " + ", ".join(f"`{k}`" for k in low) + f" ({costs} "
                     "the compute) is at or below 0.63 of the GPU baseline over its seeds. It needs about that many times "
                     "final4's matmuls: far more than 60 minutes on the project's AVX2-only CPU, where final4 alone already takes "
                     "over 60; on a CPU with native bf16, compiled and in bf16 autocast, three final4 models side by "
                     "side are the preset `final7`, the ladder's CPU rung after final4.")
    md = "\n".join([text + "\n", md_table(t, "lrrrrrrrr"),
                     ": The fifth GPU screen by matmul cost per token (relative to final4, `proxy.relative_cost`): mean "
                     "over seeds, difference to final4's seed mean (the fourth screen's three `wd-h2-b1` runs, the same "
                     "hashes) and exact permutation p; ratios to the GPU baseline. {#tbl-screen5}\n"])
    return md, numbers


def truncation_md(screen: pd.DataFrame, results: pd.DataFrame) -> tuple[str, dict]:
    """Does stopping the screen's runs early rank the changes as their end does? Paragraph, table, numbers."""
    ri = results.drop_duplicates("hash").set_index("hash")
    curves = {h: read_curve(ri.loc[h, "dir"]).assign(epochs=ri.loc[h, "epochs"], max_steps=ri.loc[h, "max_steps"],
                                                     evals_per_epoch=ri.loc[h, "evals_per_epoch"])
              for h in screen["hash"] if h in ri.index and isinstance(ri.loc[h, "dir"], str)}
    table, s = truncation_agreement(screen, curves)
    if table.empty:
        return "", {}
    ref = screen.loc[screen["label"] == "final", "hash"]
    decay = float(ri.loc[ref.iloc[0], "decay_frac"]) if len(ref) and ref.iloc[0] in ri.index else math.nan
    before = table[table["fraction"] <= 1 - decay + 1e-9]
    last = before.iloc[-1] if len(before) else None
    flips = []
    if last is not None:
        d, fin = s["deltas"].loc[last["epoch"]], s["deltas"].iloc[-1]
        flips = [k for k in fin.index if s["clear"][k] and pd.notna(d[k]) and (d[k] > 0) != (fin[k] > 0)]
    text = ("Reading the screen's own runs part-way is a proxy that costs nothing to test: at every evaluation "
            "(each half epoch) each change's validation loss minus the reference's mean at that point is set against "
            f"its delta at the end, over the {s['pairs']} one-change points (the vocabulary points, whose official "
            f"deltas come from coverage, and the stack are left out; {s['clear_pairs']} have a final effect beyond "
            f"twice the reference's seed spread).")
    if last is not None:
        text += (f" Up to the start of the final decay ({1 - decay:.0%} of the steps), the best Spearman correlation "
                 f"is {before['spearman'].max():.2f} and signs agree for at most {before['sign_agreement'].max():.0%}"
                 f"; at epoch {last['epoch']:g}, {len(flips)} of the clear changes still point the other way"
                 + (f" ({', '.join(flips)})" if flips else "") + ".")
    if len(table) > 1:
        pen = table.iloc[-2]
        text += (f" The ranking keeps changing to the last evaluation: at {pen['fraction']:.0%} of the steps the "
                 f"Spearman correlation with the end is {pen['spearman']:.2f}. Stopping a run early is not a cheaper "
                 "proxy under this schedule.")
    t = pd.DataFrame({"epoch": table["epoch"].map(lambda x: f"{x:g}"), "share of the run": table["fraction"].map(lambda x: f"{x:.0%}"),
                      "pairs": table["pairs"].astype(str), "same sign": table["sign_agreement"].map(lambda x: f"{x:.0%}"),
                      "same sign, clear": table["clear_sign_agreement"].map(lambda x: "" if _nan(x) else f"{x:.0%}"),
                      "Spearman": table["spearman"].map(lambda x: f"{x:.2f}")})
    md = "\n".join([text + "\n", md_table(t, "rrrrrr"), ": The GPU screen read part-way: agreement of each change's "
                     "delta at an evaluation with its delta at the end (sign for all pairs and for the changes clear at "
                     "the end, and rank correlation). {#tbl-truncation}\n"])
    numbers = {k: v for k, v in s.items() if k not in ("deltas", "clear")}
    numbers.update(table=table.to_dict(orient="records"), flips_before_decay=flips)
    return md, numbers


def screen_table(profile: str, results: pd.DataFrame) -> pd.DataFrame:
    """The GPU screen as a readable table, every point against the final preset's seed 1337 run (first row);
    the seeds and the verdicts against their mean are in the report."""
    from .verdicts import compare
    f = screen_frame(profile, results)
    if f.empty:
        return f
    return compare(pd.concat([f[f["label"] == "final"], f[f["label"] != "final"]], ignore_index=True))


def past_section(profile: str, proxy: str, results: pd.DataFrame, proxy_results: pd.DataFrame) -> tuple[str, dict]:
    """past.md and its numbers; a short note when the screen is not in the ledger."""
    screen = screen_frame(profile, results)
    base = gpu_baseline(results)
    if screen.empty or base is None:
        return "The GPU screen of issue 14 is not in this profile's ledger.\n", {}
    seeds, info = seed_table(screen, base["final_val_loss"])
    stack_ov = screen.loc[screen["label"] == "stack", "overrides"]
    stack_ov = {k: v for k, v in (stack_ov.iloc[0] if len(stack_ov) else {}).items() if k != "train_seed"}
    parts = [md_table(seeds, "lrrrrrrr"),
             ": The final preset, attention dropout 0 and the stack (" + ", ".join(f"{k}={v}" for k, v in stack_ov.items())
             + ") over three training seeds at full scale on the GPU; difference of means to the final preset, exact "
             "permutation p (three seeds a side cannot go below 0.10), and ratio to the GPU baseline. {#tbl-screen-seeds}\n"]
    tests = read_tests(ledger.results_root(profile))
    ok = screen[screen["status"] == "finished"]
    groups = {"baseline (GPU)": [base["hash"]], **{k: ok.loc[ok["label"] == k, "hash"].tolist() for k in ("final", "stack")}}
    recs = read_studies(profile)
    if "gpu14_stack2" in recs:
        st2 = fold_seed_labels(study_frame(recs["gpu14_stack2"], results))
        groups["final3 (GPU)"] = st2.loc[(st2["label"] == "stack") & (st2["status"] == "finished"), "hash"].tolist()
    cpu_tested = results[results["hash"].isin(tests["hash"]) & (results["device"] == "cpu")]
    groups.update(cpu_groups(cpu_tested))
    groups = {k: v for k, v in groups.items() if v and tests["hash"].isin(v).any()}
    numbers = {"seeds": info}
    if len(groups) > 1:
        t = test_table(results, tests, base, groups)
        cpu_base = results[results["is_baseline"] & (results["device"] == "cpu") & (results["status"] == "finished")]
        cpu_note = (f" The CPU runs are set against the same GPU baseline: the CPU baseline's weights are not kept, and "
                    f"its validation loss ({fmt_loss(cpu_base['final_val_loss'].iloc[0])}) differs from the GPU "
                    f"baseline's by {abs(cpu_base['final_val_loss'].iloc[0] / base['final_val_loss'] - 1):.3%}."
                    if len(cpu_tested) and len(cpu_base) else "")
        parts += [md_table(t, "lrrrrrrrr"),
                  ": The held-out test sets (`mainrun.testset`: 10,000 random titles the split never selects, seed "
                  "2026, and the 5,000 latest), read once after the selections were made on the validation loss. "
                  "Ratios are to the GPU baseline's loss on the same text (official metric, and the full-coverage "
                  "loss for test:random); runs with several seeds are averaged." + cpu_note + " {#tbl-test}\n"]
        numbers["test"] = t.to_dict(orient="records")
    later, numbers["later"] = later_rounds_md(profile, results, base["final_val_loss"])
    parts.append(later)
    parts.append(agreement_md(profile, screen, proxy, proxy_results, results))
    trunc, numbers["truncation"] = truncation_md(screen, results)
    parts.append(trunc)
    return "\n".join(parts), numbers
