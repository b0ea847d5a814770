"""Statistics over study tables: comparisons against a reference point, exact permutation tests between seed
groups, agreement between two scales or part-way readings, stacking what helped, checks on single runs.
Studies and reference labels are arguments: nothing here knows a particular round of research."""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluate import official_coverage
from .formats import is_nan, fmt_bpc, fmt_int, fmt_loss, fmt_time
from .studies import by_point
from .tables import log_events, read_curve


# ----------------------------------------------------------------------------- one study
def compare(frame: pd.DataFrame) -> pd.DataFrame:
    """A study frame as a readable table, each point against the first (a point without a finished run
    shows its status)."""
    ok = frame.drop_duplicates(["label", "seed"])
    loss = pd.to_numeric(ok["final_val_loss"], errors="coerce")
    bpc = pd.to_numeric(ok["full_val_bpc"], errors="coerce")
    ref, ref_bpc, first = loss.iloc[0], bpc.iloc[0], ok["label"].iloc[0]
    vs = lambda xs, r: ["" if is_nan(x) or is_nan(r) else f"{x / r - 1:+.2%}" for x in xs]
    return pd.DataFrame({
        "point": ok["label"], "seed": ok["seed"], "status": ok["status"], "official loss": loss.map(fmt_loss),
        f"vs {first}": vs(loss, ref), "full bits/char": ok["full_val_bpc"].map(fmt_bpc),
        f"full vs {first}": vs(bpc, ref_bpc), "params": ok["n_params"].map(fmt_int),
        "tokens/s": ok["tokens_per_s"].map(fmt_int), "wall time": ok["wall_time_s"].map(fmt_time),
    }).reset_index(drop=True)


def fold_seed_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A point's extra training seeds, recorded under their own labels ("final-s1338"), under the point's label."""
    return frame.assign(label=frame["label"].str.replace(r"-s\d+$", "", regex=True))


def study_effects(name: str, frame: pd.DataFrame, ref_label: str | None, results: pd.DataFrame) -> list[dict]:
    """Each point of a study frame against its reference (means over seeds), judged on the official loss, or on
    the full-coverage one where the point moves the official coverage."""
    rows = []
    if ref_label is not None:  # the reference's extra seeds ("final-s1338") are the reference
        extra_seeds = rf"^{re.escape(ref_label)}-s\d+$"
        frame = frame.assign(label=frame["label"].str.replace(extra_seeds, ref_label, regex=True))
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
        judged_on = ("official" if not moved else "full coverage" if not is_nan(full_delta) else "none")
        judged_delta = full_delta if judged_on == "full coverage" else delta
        verdict = ("not judged" if judged_on == "none" else "no change" if abs(judged_delta) < NO_CHANGE
                   else "helped" if judged_delta < 0 else "did not help")
        devices = results.loc[results["hash"].isin(frame.loc[frame["label"] == label, "hash"]), "device"]
        rows.append({"study": name, "change": label, "reference": ref_label, "loss": s["loss_mean"],
                     "reference_loss": ref["loss_mean"], "delta": delta, "seeds": int(s["seeds"]),
                     "verdict": verdict, "device": "/".join(sorted(set(devices.dropna()))) or None,
                     "full_delta": full_delta, "coverage": cov.get(label, math.nan),
                     "reference_coverage": cov.get(ref_label, math.nan), "judged_on": judged_on,
                     "judged_delta": judged_delta, "reference_seeds": int(ref["seeds"])})
    return rows


def deltas(frame: pd.DataFrame, changes: list[str], ref: str) -> tuple[dict[str, float], float, float]:
    """({change: its mean loss minus the reference's}, reference mean, reference seed std) from a study frame
    (extra seeds "<label>-s<seed>" count for their point); changes without a finished run are left out."""
    done = fold_seed_labels(frame[frame["status"] == "finished"]).groupby("label")["final_val_loss"]
    if ref not in done.groups:
        return {}, math.nan, math.nan
    mean, sd = done.mean(), done.std()
    return {k: float(mean[k] - mean[ref]) for k in changes if k in mean.index}, float(mean[ref]), float(sd[ref])


def choose_stack(frame: pd.DataFrame, ref: str, k: float = 2.0, floor: float = 0.001,
                 keep_out: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[tuple[str, float]], float]:
    """Stack what beat a reference: the points whose mean loss is below the reference's by more than max(k x its
    seed std, floor), best first, one value per knob and none touching `keep_out`. Returns (the overrides, the
    members as (label, delta), the threshold); nothing where the reference has no finished run."""
    d, mean, sd = deltas(frame, [lb for lb in dict.fromkeys(frame["label"]) if lb != ref], ref)
    if math.isnan(mean):
        return {}, [], math.nan
    threshold = max(k * (0.0 if math.isnan(sd) else sd), floor)
    over = {r.label: {kk: vv for kk, vv in r.overrides.items() if kk != "train_seed"}
            for r in fold_seed_labels(frame).itertuples()}
    stack: dict[str, Any] = {}
    members = []
    for label, delta in sorted(d.items(), key=lambda x: x[1]):
        if delta >= -threshold or set(over[label]) & (set(stack) | keep_out):
            continue
        stack.update(over[label])
        members.append((label, delta))
    return stack, members, threshold


# ----------------------------------------------------------------------------- seeds
def permutation_p(a: list[float], b: list[float]) -> float | None:
    """Exact two-sided permutation test on the difference of means; with 3 seeds a side p is at least 0.1."""
    if len(a) < 2 or len(b) < 2:
        return None
    pooled = list(a) + list(b)

    def gap(idx: tuple[int, ...]) -> float:
        rest = [x for i, x in enumerate(pooled) if i not in idx]
        return abs(sum(pooled[i] for i in idx) / len(idx) - sum(rest) / len(rest))
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    obs = gap(splits[0])   # the first split is a against b
    return sum(gap(idx) >= obs - 1e-12 for idx in splits) / len(splits)


def permutation_floor(n_a: int, n_b: int) -> float | None:
    """The smallest p `permutation_p` can give for n_a against n_b seeds (0.10 for 3 against 3, 1/35 for 4
    against 3)."""
    return permutation_p([i * 1e-6 for i in range(n_a)], [1.0 + i * 1e-6 for i in range(n_b)])


def chance_calls(seeds: list[int], reference_seeds: list[int], k: float = 2.0) -> float:
    """The expected number of points called beyond `k` reference seed std by chance alone, if no change had any
    effect: a point's mean over n seeds minus its reference's mean over m differs by sd * sqrt(1/n + 1/m), so
    each is called with probability erfc(k / sqrt(2 (1/n + 1/m))) (normal noise, the reference's spread taken
    as the true one)."""
    return sum(math.erfc(k / math.sqrt(2 * (1 / n + 1 / m))) for n, m in zip(seeds, reference_seeds))


def sign_test_p(k: int, n: int) -> float:
    """Exact two-sided binomial p of k agreeing signs out of n against a coin's 1/2."""
    probs = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return min(1.0, sum(q for q in probs if q <= probs[k] + 1e-12))


NO_CHANGE = 0.001  # |relative change| below 0.1% of the loss is reported as no change
SAME_COVERAGE = 0.001  # official coverages closer than this count as the same scored text


# ----------------------------------------------------------------------------- two scales
def _sign_rank(x: pd.Series, y: pd.Series, clear: pd.Series) -> dict[str, float]:
    """How often two sets of deltas share a sign (all, and those `clear` of the noise); their Spearman."""
    same = (x > 0) == (y > 0)
    return {"sign_agreement": float(same.mean()),
            "clear_sign_agreement": float(same[clear].mean()) if clear.any() else math.nan,
            "spearman": float(x.rank().corr(y.rank()))}


def agreement(full: pd.DataFrame, quick: pd.DataFrame, changes: list[str], ref: str) -> tuple[pd.DataFrame, dict]:
    """The same `changes` against `ref` in two study frames at two scales: per change the delta at each, same
    sign, and whether the full delta is beyond twice the full reference's seed std; and a summary (pairs, sign
    agreement, Spearman)."""
    d_full, m_full, sd_full = deltas(full, changes, ref)
    d_quick, m_quick, sd_quick = deltas(quick, changes, ref)
    rows = [{"change": k, "full": d_full[k], "quick": d_quick[k], "same_sign": (d_full[k] > 0) == (d_quick[k] > 0),
             "full_clear": abs(d_full[k]) > 2 * sd_full}
            for k in changes if k in d_full and k in d_quick]
    table = pd.DataFrame(rows)
    summary = {"pairs": len(table), "full_reference": m_full, "full_seed_sd": sd_full,
               "quick_reference": m_quick, "quick_seed_sd": sd_quick}
    if len(table):
        rank = _sign_rank(table["full"], table["quick"], table["full_clear"])
        summary.update(sign_agreement=rank["sign_agreement"], clear_pairs=int(table["full_clear"].sum()),
                       clear_sign_agreement=rank["clear_sign_agreement"], spearman=rank["spearman"])
    return table, summary


def truncation_agreement(screen: pd.DataFrame, curves: dict[str, pd.DataFrame], ref: str,
                         skip: tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict]:
    """Would stopping early rank the changes as the finished runs do? At each evaluation epoch, each point's
    loss minus the reference's mean against its final delta, as in `agreement`. `curves`: {hash: read_curve
    frame with `epochs`, `max_steps`, `evals_per_epoch`}; `skip`: labels that are not one change."""
    ok = screen[(screen["status"] == "finished") & ~screen["label"].isin(skip)]
    rows = []
    for r in ok.itertuples():
        c = curves.get(r.hash)
        if c is None or c.empty:
            continue
        for step, loss, epochs, max_steps, per in zip(c["step"], c["loss"], c["epochs"], c["max_steps"],
                                                     c["evals_per_epoch"]):
            if step > 1:  # the step-1 reading is the untrained model; the others sit at multiples of 1/per epoch
                epoch = round(step * epochs / max_steps * per) / per
                rows.append({"label": r.label, "hash": r.hash, "epoch": epoch, "loss": loss})
    if not rows:
        return pd.DataFrame(), {}
    long = pd.DataFrame(rows)
    mean = long.groupby(["epoch", "label"])["loss"].mean().unstack("label")
    if ref not in mean.columns:
        return pd.DataFrame(), {}
    delta = mean.sub(mean[ref], axis=0).drop(columns=ref)
    end = delta.index.max()
    final = delta.loc[end]
    sd = float(long[(long["label"] == ref) & (long["epoch"] == end)]["loss"].std())
    clear = final.abs() > 2 * sd
    out = []
    for epoch, d in delta.iterrows():
        both = d.notna() & final.notna()
        out.append({"epoch": epoch, "fraction": epoch / end, "pairs": int(both.sum()),
                    **_sign_rank(d[both], final[both], clear[both])})
    summary = {"final_seed_sd": sd, "clear_pairs": int(clear.sum()), "pairs": int(final.notna().sum()),
               "deltas": delta, "clear": clear}
    return pd.DataFrame(out), summary


# ----------------------------------------------------------------------------- single runs
def relative_cost(cfg, ref) -> float:
    """Matmul FLOPs per token of `cfg` over `ref`'s: ensemble x (n_layer x (4 + 2 mlp_mult) x d_model^2 + d_model
    x vocab_size); attention's own T x d_model per layer is left out (about a tenth at d_model 192)."""
    def flops(c) -> float:
        return c.ensemble * (c.n_layer * (4 + 2 * c.mlp_mult) * c.d_model ** 2 + c.d_model * c.vocab_size)
    return flops(cfg) / flops(ref)


def coverage_check(ladder: pd.DataFrame) -> pd.DataFrame:
    """Step-1 check of the metric's normalisation: an untrained model predicts nearly uniformly, so its
    official loss should be ln(V) x scored tokens / validation chars."""
    rows = []
    for _, st in ladder.dropna(subset=["dir"]).iterrows():
        info = next(iter(log_events(st["dir"], "dataset_info")), None)
        first = next(iter(log_events(st["dir"], "validation_step")), None)
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


def curve_agreement(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any] | None:
    """Largest |difference| of two runs' validation losses over the evaluations both logged."""
    a, b = read_curve(dir_a).set_index("step")["loss"], read_curve(dir_b).set_index("step")["loss"]
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    diff = (a[common] - b[common]).abs()
    return {"evaluations": int(len(common)), "last_step": int(common.max()), "max_abs_diff": float(diff.max())}
