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
from .proxy import PROXY_STUDY, agreement, truncation_agreement
from .results import read_curve, read_studies, study_frame
from .verdicts import permutation_p, screen_frame

CANDIDATES = ("final", "attn0", "stack")


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


def agreement_md(profile: str, screen: pd.DataFrame, proxy: str, proxy_results: pd.DataFrame) -> str:
    """The agreement paragraph and table; `screen` is verdicts.screen_frame(profile, ...)."""
    recs, precs = read_studies(profile), read_studies(proxy)
    if "gpu14_screen" not in recs or PROXY_STUDY not in precs:
        return ("The quick proxy's mirror of the GPU screen (`mainrun.proxy`, study `14_proxy`) is not in the "
                "ledger yet: no agreement table.\n")
    table, s = agreement(screen, study_frame(precs[PROXY_STUDY], proxy_results))
    if table.empty:
        return "No change was measured at both scales yet.\n"
    t = pd.DataFrame({"change": table["change"], "full scale (GPU)": table["full"].map(lambda x: f"{x:+.4f}"),
                      f"{proxy} proxy (CPU)": table["quick"].map(lambda x: f"{x:+.4f}"),
                      "same sign": table["same_sign"].map({True: "yes", False: "no"}),
                      "full-scale effect beyond 2 std": table["full_clear"].map({True: "yes", False: "no"})})
    text = (f"Does the {proxy} proxy rank changes as full scale does? Each change of the GPU screen that means the same "
            f"thing at d64 x 2 layers was made again on the {proxy} proxy, on top of the final recipe "
            f"(`mainrun.proxy`, study `{PROXY_STUDY}`). Over {s['pairs']} pairs the signs agree for "
            f"{s['sign_agreement']:.0%}; for the {s['clear_pairs']} changes whose full-scale effect is beyond twice the "
            f"final preset's seed spread ({s['full_seed_sd']:.4f}) they agree for {s['clear_sign_agreement']:.0%}. "
            f"Spearman's rank correlation of the deltas is {s['spearman']:.2f}. The proxy's own seed spread is "
            f"{s['quick_seed_sd']:.4f} (two seeds of its reference).\n")
    return "\n".join([text, md_table(t, "lrrll"), ": One change at two scales: official loss minus the "
                      "reference's (full scale: the final preset's 3-seed mean on the GPU; proxy: its reference's "
                      "2-seed mean). {#tbl-proxy-agreement}\n"])


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
    parts.append(agreement_md(profile, screen, proxy, proxy_results))
    trunc, numbers["truncation"] = truncation_md(screen, results)
    parts.append(trunc)
    return "\n".join(parts), numbers
