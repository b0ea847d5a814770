"""Statistics and judgements over the ledger's tables (from `results`).

`compare` and `gpu_study` set a study's points against its reference; `permutation_p` is an exact
test between seed groups; `findings` judges every single change (helped, no change, did not help,
on the official or the full-coverage loss); `coverage_check` checks the metric's normalisation at
step 1; `time_to_quality`, `curve_agreement` and `proxy_vs_full` compare runs and scales;
`_gpu_seed_std` is the seed spread of the GPU's full-scale runs.
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import ledger
from .evaluate import official_coverage
from .formats import _millions, _nan, fmt_bpc, fmt_int, fmt_loss, fmt_time
from .results import _gpu_small_points, ladder_frame, load_results, read_curve, read_studies, study_frame
from .studies import STUDY_PROFILE, by_point


# ----------------------------------------------------------------------------- study tables
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


def permutation_floor(n_a: int, n_b: int) -> float | None:
    """The smallest p `permutation_p` can give for n_a against n_b seeds: its p where the two groups do not
    overlap at all (2/20 = 0.10 for 3 against 3, 1/35 for 4 against 3, where the mirror split is less extreme)."""
    return permutation_p([i * 1e-6 for i in range(n_a)], [1.0 + i * 1e-6 for i in range(n_b)])


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
    recs = read_studies(profile)
    for name, rec in recs.items():
        if (name in ("gpu_ladder", "gpu_seeds") or name.startswith("gpu14_")
                or any(r.get("axis") == "search" for r in rec["rows"])):
            continue  # a ladder (each rung against the previous), repeats and searches (each trial changes
                      # several settings at once): shown as tables and plots, not as one-change findings;
                      # the issue-14 screen is judged below against the final preset's seeds
        ref_label = rec["rows"][0]["label"] if rec["rows"] else None
        rows += _study_findings(name, study_frame(rec, results), ref_label, results)
    screen = screen_frame(profile, results)
    if len(screen):
        rows += _study_findings("gpu14_screen", screen, "final", results)
    for name, ref in LATER_SCREENS:  # each later round against its own reference's seeds
        if name in recs:
            rows += _study_findings(name, fold_seed_labels(study_frame(recs[name], results)), ref, results)
    return pd.DataFrame(rows, columns=["study", "change", "reference", "loss", "reference_loss", "delta", "seeds",
                                       "verdict", "device", "full_delta", "coverage", "reference_coverage",
                                       "judged_on", "judged_delta"])


SCREEN_STUDIES = ("gpu14_seeds", "gpu14_screen", "gpu14_stack")
# The later GPU screens (scripts/gpu_screen2.py) and their references: final2's seeds, then the second stack's
# (the third and fourth screens), then final4's (the fifth).
LATER_SCREENS = (("gpu14_screen2", "final2"), ("gpu14_screen3", "stack"), ("gpu14_screen4", "stack"),
                 ("gpu14_screen5", "final4"))


def screen_frame(profile: str, results: pd.DataFrame) -> pd.DataFrame:
    """The issue-14 GPU screen as one study frame (scripts/gpu_search.py): the final preset's seeds under the
    label "final" (the reference), attn0's and the stack's seeds under theirs, and each one-change point.
    The stack's leave-one-out points are the screen's runs under other names and are left out."""
    recs = read_studies(profile)
    frames = [study_frame(recs[k], results) for k in SCREEN_STUDIES if k in recs]
    if not frames:
        return pd.DataFrame()
    f = pd.concat(frames, ignore_index=True)
    f = fold_seed_labels(f[~f["label"].str.startswith("stack-minus-")])
    return f.drop_duplicates("hash").reset_index(drop=True)


def fold_seed_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A point's extra training seeds, recorded under their own labels ("final-s1338"), under the point's label."""
    return frame.assign(label=frame["label"].str.replace(r"-s\d+$", "", regex=True))


def _study_findings(name: str, frame: pd.DataFrame, ref_label: str | None, results: pd.DataFrame) -> list[dict]:
    """Each point of one study frame against its reference point (mean over seeds where repeated)."""
    rows = []
    if ref_label is not None:  # the reference's extra seeds under their own labels ("final-s1338") are the reference
        frame = frame.assign(label=frame["label"].str.replace(rf"^{re.escape(ref_label)}-s\d+$", ref_label, regex=True))
    stats = by_point(frame)
    if ref_label not in stats.index or len(stats) < 2:
        return rows
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
    return rows


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


# ----------------------------------------------------------------------------- runs on two kinds of device
def curve_agreement(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any] | None:
    """Largest |difference| of two runs' validation losses over the evaluations both logged."""
    a, b = read_curve(dir_a).set_index("step")["loss"], read_curve(dir_b).set_index("step")["loss"]
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    diff = (a[common] - b[common]).abs()
    return {"evaluations": int(len(common)), "last_step": int(common.max()), "max_abs_diff": float(diff.max())}


def _gpu_seed_std(profile: str, results: pd.DataFrame) -> float | None:
    """The seed spread of the GPU's full-scale small models: the mean std over the points repeated with
    two or more seeds in the GPU studies (None if none was)."""
    pts = _gpu_small_points(profile, results)
    if pts.empty:
        return None
    g = pts.groupby("label")["final_val_loss"]
    stds = g.std(ddof=1)[g.size() >= 2]
    return float(stds.mean()) if len(stds) else None


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
