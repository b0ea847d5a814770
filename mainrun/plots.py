"""The figures: each function takes tables (from `tables`, `stats`, `report_text`) and returns a Figure."""
from __future__ import annotations

from itertools import cycle
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .stats import agreement, fold_seed_labels

# one colour per curve, stable across figures
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def save(fig: Figure, path: str | Path, close: bool = False) -> Path:
    """PNG at 150 dpi; close=True when the figure is only for the report (not shown inline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    if close:
        plt.close(fig)
    return path


def _finish(fig: Figure, axes, title: str = "", grid: str = "both") -> Figure:
    """What every figure ends with: a light grid on its panels, the title above them all, a tight layout."""
    for ax in axes:
        ax.grid(alpha=0.3, axis=grid)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def validation_curves(curves: dict[str, pd.DataFrame], title: str = "", budget_min: float | None = None,
                      baseline_loss: float | None = None) -> Figure:
    """Official validation loss against training tokens and against wall time, with the baseline's final
    loss and the time budget as lines where given."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    if baseline_loss is not None:
        for ax in (a, b):
            ax.axhline(baseline_loss, color="0.4", ls=":", lw=1, label="baseline's final loss")
    if budget_min is not None:
        b.axvline(budget_min, color="0.4", ls="--", lw=1, label=f"{budget_min:.0f}-minute budget")
    for color, (label, c) in zip(cycle(COLORS), curves.items()):
        kw = dict(color=color, marker="o", ms=3, lw=1.4, label=label)
        a.plot(c["tokens"] / 1e6, c["loss"], **kw)
        b.plot(c["elapsed_time"] / 60, c["loss"], **kw)
    a.set(xlabel="training tokens (millions)", ylabel="official validation loss (nats/char)")
    b.set_xlabel("wall time (minutes)")
    if curves:   # one legend below the panels, outside the data
        _zoom(a, curves)
        handles = a.get_lines() + [ln for ln in b.get_lines() if "budget" in str(ln.get_label())]
        fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.02),
                   frameon=False)
    fig = _finish(fig, (a, b), title)
    if curves:
        fig.subplots_adjust(bottom=0.22 + 0.05 * ((len(curves) + 1) // 4))
    return fig


def _zoom(ax, curves: dict[str, pd.DataFrame]) -> None:
    """The step-1 point is far above the rest; keep it visible but give the range to the later points."""
    later = pd.concat([c["loss"].iloc[1:] for c in curves.values() if len(c) > 1] or [pd.Series(dtype=float)])
    first = max(c["loss"].iloc[0] for c in curves.values() if len(c))
    if len(later):
        lo, hi = later.min(), later.max()
        pad = 0.1 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, min(first, hi + 4 * pad) + pad)


def lr_schedules(schedules: dict[str, pd.DataFrame], title: str = "",
                 muon_lr: dict[str, float] | None = None) -> Figure:
    """LR against the fraction of training (linear axes): the SGD/AdamW LR the log shows, and where `muon_lr`
    names a run's peak Muon LR, Muon's (the same schedule scaled to its peak). Runs whose schedules are
    identical share one line, labelled with all their names."""
    muon_lr = muon_lr or {}
    lines: list[tuple[list[str], pd.DataFrame]] = []   # identical schedules merged: (labels, schedule)
    for label, sch in schedules.items():
        if sch.empty:
            continue
        same = next((ln for ln in lines if len(ln[1]) == len(sch) and np.allclose(ln[1]["lr"], sch["lr"])
                     and muon_lr.get(ln[0][0]) == muon_lr.get(label)), None)
        if same is not None:
            same[0].append(label)
        else:
            lines.append(([label], sch))
    has_muon = any(muon_lr.get(labels[0]) for labels, _ in lines)
    fig, axs = plt.subplots(1, 2 if has_muon else 1, figsize=(10, 3.4), squeeze=False)
    a = axs[0, 0]
    for color, (labels, sch) in zip(cycle(COLORS), lines):
        x = sch["step"] / sch["max_steps"]
        name = " = ".join(labels)
        a.plot(x, sch["lr"], color=color, lw=1.4, label=name)
        if has_muon and muon_lr.get(labels[0]):
            axs[0, 1].plot(x, sch["lr"] / sch["lr"].max() * muon_lr[labels[0]], color=color, lw=1.4, label=name)
    a.set(ylabel="learning rate (SGD or AdamW)", xlabel="fraction of training")
    a.set_ylim(bottom=0)
    if has_muon:
        axs[0, 1].set(ylabel="Muon learning rate (hidden matrices)", xlabel="fraction of training")
        axs[0, 1].set_ylim(bottom=0)
    if lines:
        fig.legend(*a.get_legend_handles_labels(), loc="lower center", ncol=min(4, len(lines)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig = _finish(fig, axs.flat, title)
    fig.subplots_adjust(bottom=0.3)
    return fig


AXIS_WORDS = {"lr": "learning rate", "weight_decay": "weight decay", "dropout": "dropout",
              "grad_accum": "gradient accumulation steps (batch multiple)", "muon_lr": "Muon learning rate"}


def sensitivity(sweep: pd.DataFrame, band: tuple[float, float] | None = None,
                seeds: pd.DataFrame | None = None, proxy: str | None = None) -> Figure:
    """One panel per swept field: official loss per value (a dot per seed, the mean a line), with the base
    point's mean +- 1 seed std as a grey band; a last panel shows the final candidates over seeds."""
    axes_names = [a for a in dict.fromkeys(sweep["axis"].dropna()) if a != "grid"] if len(sweep) else []
    panels = axes_names + (["seeds"] if seeds is not None and len(seeds) else [])
    n = max(1, len(panels))
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axs = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axs.flat[n:]:
        ax.set_visible(False)
    for ax, name in zip(axs.flat, panels):
        if name == "seeds":
            _seed_panel(ax, seeds)
        else:
            _axis_panel(ax, sweep[(sweep["axis"] == name) & (sweep["status"] == "finished")], name, band)
    if not panels:
        axs[0, 0].text(0.5, 0.5, "no sweep recorded", ha="center", va="center")
    axs[0, 0].set_ylabel("official validation loss")
    if proxy:
        fig.suptitle(f"on the {proxy} proxy (a small model, {len(sweep)} short runs): differences are small in "
                     "absolute terms", fontsize=9)
    return _finish(fig, axs.flat[:len(panels)])


def sensitivity_full(points: pd.DataFrame, words: dict[str, str] | None = None) -> Figure:
    """Epic 3 at full scale: per field, each single change's loss change against its round's reference (in % of
    the reference's loss, with 2 seed std as a bar) at the value it tried, a colour per round; the reference's
    own value is the round's point at 0."""
    fields_ = list(dict.fromkeys(points["field"]))
    rounds = list(dict.fromkeys(points["where"]))
    color = dict(zip(rounds, cycle(COLORS)))
    cols = min(3, len(fields_))
    rows = int(np.ceil(len(fields_) / cols))
    fig, axs = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.5), squeeze=False)
    for ax in axs.flat[len(fields_):]:
        ax.set_visible(False)
    for ax, field in zip(axs.flat, fields_):
        d = points[points["field"] == field]
        for where, g in d.groupby("where", sort=False):
            ax.errorbar(g["value"].astype(float), 100 * g["delta"], yerr=200 * g["noise"], fmt="o", ms=4,
                        color=color[where], capsize=2, lw=0.8)
            ax.scatter(g["reference_value"].astype(float).unique(), [0] * g["reference_value"].nunique(),
                       marker="s", s=22, facecolors="none", edgecolors=color[where], zorder=3)
        ax.axhline(0, color="k", lw=0.6)
        if field in ("lr", "muon_lr", "weight_decay") and (d[["value", "reference_value"]].astype(float) > 0).all().all():
            _log_ticks(ax, list(d["value"].astype(float)) + list(d["reference_value"].astype(float)))
        ax.set_xlabel((words or {}).get(field, field.replace("_", " ")), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axs[:, 0]:
        ax.set_ylabel("loss change (% of the\nreference's loss)", fontsize=8)
    handles = [plt.Line2D([], [], color=color[r], marker="o", ls="", label=r) for r in rounds]
    handles.append(plt.Line2D([], [], color="0.3", marker="s", ls="", mfc="none", label="the round's reference"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, bbox_to_anchor=(0.5, -0.01),
               frameon=False)
    fig = _finish(fig, axs.flat[:len(fields_)])
    fig.subplots_adjust(bottom=0.3 if rows == 1 else 0.17, hspace=0.45)
    return fig


def _log_ticks(ax, values: list[float]) -> None:
    """A log x axis ticked at the values tried, written plainly (no overprinted 10^x minor labels)."""
    ax.set_xscale("log")
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks], rotation=45 if len(ticks) > 4 else 0)
    ax.xaxis.set_minor_formatter(plt.NullFormatter())


def _axis_panel(ax, d: pd.DataFrame, name: str, band: tuple[float, float] | None) -> None:
    numeric = pd.to_numeric(d["value"], errors="coerce").notna().all()
    if numeric:
        x = d["value"].astype(float)
    else:
        cats = list(dict.fromkeys(d["value"].astype(str)))
        x = d["value"].astype(str).map(cats.index)
        ax.set_xticks(range(len(cats)), cats)
    ax.scatter(x, d["final_val_loss"], s=14, color=COLORS[0], zorder=3)
    mean = d.assign(x=x).groupby("x")["final_val_loss"].agg(["mean", "std"]).sort_index()
    ax.errorbar(mean.index, mean["mean"], yerr=mean["std"].fillna(0), color=COLORS[0], lw=1.2, capsize=3)
    if band is not None and not np.isnan(band[1]):
        ax.axhspan(band[0] - band[1], band[0] + band[1], color="0.6", alpha=0.25, lw=0, label="base: seed spread")
        ax.legend(fontsize=7)
    if numeric and name in ("lr", "muon_lr", "weight_decay") and (d["value"].astype(float) > 0).all():
        _log_ticks(ax, d["value"].astype(float).tolist())
    ax.set_xlabel(AXIS_WORDS.get(name, name.replace("_", " ")))
    lo, hi = d["final_val_loss"].min(), d["final_val_loss"].max()
    if len(d) and hi - lo < 1e-4:   # a flat axis: say so rather than draw noise at 1e-6
        ax.text(0.5, 0.9, f"flat: spread {hi - lo:.1e}", transform=ax.transAxes, ha="center", fontsize=7)


def _seed_panel(ax, seeds: pd.DataFrame) -> None:
    ok = seeds[seeds["status"] == "finished"]
    labels = list(dict.fromkeys(ok["label"]))
    for i, (lab, color) in enumerate(zip(labels, cycle(COLORS))):
        y = ok.loc[ok["label"] == lab, "final_val_loss"]
        ax.scatter(np.full(len(y), i), y, s=14, color=color, zorder=3)
        ax.errorbar([i + 0.15], [y.mean()], yerr=[y.std(ddof=1) if len(y) > 1 else 0], fmt="_", ms=12,
                    color="k", capsize=3)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xlabel("final candidates over seeds")


def search_history(history: pd.DataFrame, title: str = "") -> Figure:
    """A search by trial (search.history): completed trials' losses, pruned trials' losses where they
    stopped, and the best so far."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    done = history[history["state"] == "COMPLETE"]
    pruned = history[history["state"] == "PRUNED"]
    ax.scatter(done["trial"], done["value"], s=22, color=COLORS[0], zorder=3, label="completed: official loss")
    if len(pruned):
        ax.scatter(pruned["trial"], pruned["last_intermediate"], s=28, marker="x", color=COLORS[3], zorder=3,
                   label="pruned: loss where it stopped")
    best = history.dropna(subset=["best"])
    if len(best):
        ax.step(best["trial"], best["best"], where="post", color="k", lw=1.2, label="best so far")
    if len(done):
        lo, hi = done["value"].min(), done["value"].max()
        pad = max(hi - lo, 1e-3) * 0.6
        top = hi + pad
        # pruned trials stop early, far above: frame the completed ones; those above sit on its edge, loss shown
        ax.set_ylim(lo - pad * 0.3, top)
        above = pruned[pruned["last_intermediate"] > top] if len(pruned) else pruned
        for r in above.itertuples():
            ax.annotate(f"{r.last_intermediate:.2f}", (r.trial, top), xytext=(0, -11), textcoords="offset points",
                        ha="center", fontsize=7, color=COLORS[3])
            ax.scatter([r.trial], [top], marker="^", s=30, color=COLORS[3], clip_on=False, zorder=4)
    ax.set(xlabel="trial", ylabel="validation loss (nats/char)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _finish(fig, [ax])


def param_importances(importance: pd.Series, title: str = "") -> Figure:
    """Parameter importances of a search (search.importances), largest at the top."""
    fig, ax = plt.subplots(figsize=(6, 0.45 * max(len(importance), 2) + 1.2))
    imp = importance.sort_values()
    ax.barh([str(i) for i in imp.index], imp.values, color=COLORS[0])
    ax.set(xlabel="importance (fraction)", title=title)
    if imp.empty:
        ax.text(0.5, 0.5, "too few completed trials", ha="center", va="center", transform=ax.transAxes)
    return _finish(fig, [ax], grid="x")


def forest(effects: pd.DataFrame, title: str = "", keep: int = 12) -> Figure:
    """Single-change effects, one panel per `scale`, best first: each change's relative change of the loss it is
    judged on (`judged_delta`: the official loss, or the full-coverage one where a change moves the scored
    text) against its study's reference, in percent, with bars of 2 seed std (`noise`) where measured. A panel
    of more than 2 x `keep` changes shows the `keep` best and the `keep` worst and says how many lie between.
    Labels: `words` (the change), `where` (its round) and the seeds where more than one, else `change`."""
    scales = list(dict.fromkeys(effects["scale"]))
    shown = []
    for sc in scales:
        d = effects[effects["scale"] == sc].sort_values("judged_delta")
        gap = len(d) > 2 * keep
        shown.append((sc, pd.concat([d.head(keep), d.tail(keep)]) if gap else d, len(d) - 2 * keep if gap else 0,
                      d.iloc[keep:-keep] if gap else d.iloc[:0]))
    heights = [0.16 * (len(d) + (1 if n else 0)) + 0.3 for _, d, n, _ in shown]
    fig, axes = plt.subplots(len(scales), 1, figsize=(7.5, sum(heights) + 0.7), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (sc, d, n_between, between) in zip(axes[:, 0], shown):
        y = np.arange(len(d), dtype=float)
        if n_between:   # one empty row between the worst and the best shown
            y[keep:] += 1
        x = d["judged_delta"].to_numpy() * 100
        err = (2 * d["noise"] / d["reference_loss"] * 100).fillna(0).to_numpy()
        clear = (np.abs(x) > err) & (err > 0)
        ax.errorbar(x, y, xerr=err, fmt="none", ecolor="0.7", lw=1)
        ax.scatter(x, y, s=10, c=np.where(clear, np.where(x < 0, "tab:green", "tab:red"), "0.45"), zorder=3)
        ax.axvline(0, color="k", lw=0.7)
        words = d["words"] if "words" in d else d["change"]
        where = d["where"] if "where" in d else pd.Series([""] * len(d), index=d.index)
        seeds = d["seeds"] if "seeds" in d else pd.Series([1] * len(d), index=d.index)
        ax.set_yticks(y, [f"{w} ({r}{f', {s} seeds' if s > 1 else ''})" if r else str(w)
                          for w, r, s in zip(words, where, seeds)], fontsize=6)
        if n_between:
            lo, hi = between["judged_delta"].min() * 100, between["judged_delta"].max() * 100
            ax.text(0.5, keep, f"... {n_between} more changes between {lo:+.2f}% and {hi:+.2f}% "
                    "(every change: findings.md)", transform=ax.get_yaxis_transform(), ha="center",
                    va="center", fontsize=6, color="0.3")
        ax.set_ylim(y.max() + 0.8, -0.8)
        ax.set_title(sc, fontsize=8, loc="left")
        ax.set_xlabel("change of the loss against the study's reference (% of the reference's loss)", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    return _finish(fig, axes[:, 0], title, grid="x")


def seed_spread(seeds: pd.DataFrame) -> Figure:
    """Each candidate's official loss over its training seeds (a dot per seed, mean and 1 std), in table order."""
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    _seed_panel(ax, seeds)
    ax.set(xlabel="candidate (every training seed a dot; mean and one standard deviation)",
           ylabel="official validation loss")
    ax.set_xticks(ax.get_xticks(), [t.get_text().replace(" (full scale)", "") for t in ax.get_xticklabels()])
    return _finish(fig, [ax])


def train_vs_validation(val: dict[str, pd.DataFrame], train: dict[str, pd.DataFrame]) -> Figure:
    """Official validation loss (left) and training loss smoothed over 50 steps (right) against tokens: where
    validation turns up while training keeps falling, the model overfits. Two panels, since the two losses
    have different units (nats per character, nats per token)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for color, (label, v) in zip(cycle(COLORS), val.items()):
        t = train.get(label)
        if t is not None and len(t):
            b.plot(t["tokens"] / 1e6, t["loss"].rolling(50, min_periods=1).mean(), color=color, lw=1.0)
        a.plot(v["tokens"] / 1e6, v["loss"], color=color, marker="o", ms=3, lw=1.4, label=label)
    a.set(xlabel="training tokens (millions)", ylabel="official validation loss (nats/char)")
    b.set(xlabel="training tokens (millions)", ylabel="training loss, smoothed (nats/token)")
    if val:
        _zoom(a, val)
        fig.legend(*a.get_legend_handles_labels(), loc="lower center", ncol=min(4, len(val)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig = _finish(fig, [a, b])
    fig.subplots_adjust(bottom=0.3)
    return fig


def _spread_labels(ax, points: list[tuple[float, float, str]], gap: float = 0.075) -> None:
    """Label points without overprinting: each label sits right of its point at a height pushed apart from
    its neighbours' by at least `gap` (a fraction of the axes), with a thin line to its point."""
    if not points:
        return
    to_axes = ax.transData + ax.transAxes.inverted()
    pos = sorted(((*to_axes.transform((x, y)), x, y, t) for x, y, t in points), key=lambda p: p[1])
    ys = [p[1] for p in pos]
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + gap)
    shift = max(0.0, ys[-1] - 0.97)
    ys = [y - shift for y in ys]
    for i in range(len(ys) - 2, -1, -1):   # pushed down from the top: keep the gap below too
        ys[i] = min(ys[i], ys[i + 1] - gap)
    for (ax_x, _, x, y, t), ty in zip(pos, ys):
        ax.annotate(t, (x, y), xytext=(ax_x + 0.03, ty), textcoords="axes fraction", fontsize=6, va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))


def cost_vs_loss(screens: dict[str, dict], words: dict[str, dict[str, str]] | None = None,
                 where: dict[str, str] | None = None) -> Figure:
    """Each point of the screens that change the compute: matmul cost relative to the screen's reference (x,
    log) against its loss change to the reference's seed mean in percent of it (y). Points that cost more
    than 1.15x or gain over 0.4% are labelled (`words`: {screen: {point: words}}); `where`: a screen's name in
    words."""
    words, where = words or {}, where or {}
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    labelled = []
    for color, (study, info) in zip(cycle(COLORS), screens.items()):
        pts = info.get("points") or {}
        pct = {k: 100 * v["delta"] / (v["mean"] - v["delta"]) for k, v in pts.items()}
        ax.scatter([v["cost"] for v in pts.values()], list(pct.values()), s=16, color=color,
                   label=f"{where.get(study, study)} (against {info.get('reference')})")
        labelled += [(v["cost"], pct[k], words.get(study, {}).get(k, k)) for k, v in pts.items()
                     if v["cost"] > 1.15 or pct[k] < -0.4]
    ax.axhline(0, color="k", lw=0.7)
    ax.set(xscale="log", xlabel="matmul cost per token, relative to the reference (x)",
           ylabel="loss change against the\nreference (% of its loss)")
    ax.set_xlim(right=ax.get_xlim()[1] * 2.2)   # room for the labels on the right
    ticks = [t for t in (0.5, 1, 1.5, 2, 3, 4) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    _spread_labels(ax, labelled)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _finish(fig, [ax])


def proxy_scatter(full: pd.DataFrame, proxies: dict[str, pd.DataFrame], ref: str) -> Figure:
    """Each change's delta at full scale (x) against its delta on each proxy (y), paired by `stats.agreement`."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for color, (name, frame) in zip(cycle(COLORS), proxies.items()):
        changes = [c for c in dict.fromkeys(fold_seed_labels(frame)["label"]) if c != ref]
        pairs, s = agreement(full, frame, changes, ref)
        if len(pairs):   # differences in percent of each side's reference loss
            ax.scatter(100 * pairs["full"] / s["full_reference"], 100 * pairs["quick"] / s["quick_reference"], s=16,
                       color=color, label=name)
    ax.axhline(0, color="k", lw=0.7)
    ax.axvline(0, color="k", lw=0.7)
    ax.set(xlabel="loss change at full scale on the GPU (% of the reference's loss)",
           ylabel="loss change on the proxy (% of its reference's loss)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _finish(fig, [ax])


def story(steps: pd.DataFrame) -> Figure:
    """The project in one chart: each step's loss as a ratio to its own device's baseline, with the change to the
    step before on each bar in percent of that step's loss."""
    fig, ax = plt.subplots(figsize=(8.5, 3.3))
    color = {"GPU": COLORS[0], "CPU": COLORS[1]}
    x = np.arange(len(steps))
    ax.bar(x, steps["ratio"], color=[color.get(d, "0.5") for d in steps["device"]], width=0.7)
    dev = steps["device"]
    for i, (r, p) in enumerate(zip(steps["ratio"], steps["ratio"].shift(1))):
        same_device = not pd.isna(p) and dev.iloc[i] == dev.iloc[i - 1]
        ax.text(i, r + 0.01, f"{r:.3f}" + (f"\n{r / p - 1:+.1%}" if same_device else ""), ha="center",
                va="bottom", fontsize=6.5)
    ax.set_xticks(x, steps["step"], rotation=30, ha="right", fontsize=7.5)
    ax.set_ylabel("official loss / the baseline's\n(on the same device)", fontsize=8)
    ax.set_ylim(0, 1.15)
    for d, c in color.items():
        ax.bar([0], [0], color=c, label=f"trained on the {d}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _finish(fig, [ax], grid="y")


def placeholder(what: str) -> Figure:
    """A small figure that says what this ledger lacks, where a figure of the report has no data here."""
    fig, ax = plt.subplots(figsize=(6.0, 1.2))
    ax.text(0.5, 0.5, f"not in this ledger: {what}", ha="center", va="center", fontsize=9)
    ax.set_axis_off()
    return fig


# parameter groups of the stability events: their words and line styles
GROUPS = {"hidden": ("hidden matrices", "-"), "embed": ("embeddings and head", "--"),
          "other": ("norms and biases", ":")}


def stability(runs: dict[str, pd.DataFrame], names: dict[str, str] | None = None) -> Figure:
    """Per run (tables.read_stability): the gradient norm before clipping, and each parameter group's
    update-to-weight ratio (a line style per group), against the optimizer step; one legend below the panels
    (a colour per run, named by `names` where given, a line style per group)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for color, (label, d) in zip(cycle(COLORS), runs.items()):
        a.plot(d["step"], d["grad_norm"], color=color, marker="o", ms=2, lw=1.2, label=label)
        for g, (words, ls) in GROUPS.items():
            if f"ratio_{g}" in d:
                b.plot(d["step"], d[f"ratio_{g}"], color=color, ls=ls, lw=1.2)
    a.set(yscale="log", xlabel="optimizer step", ylabel="gradient norm before clipping")
    b.set(yscale="log", xlabel="optimizer step", ylabel="update size / weight size, per step")
    handles = [plt.Line2D([], [], color=c, lw=1.2, label=(names or {}).get(k, k))
               for c, k in zip(cycle(COLORS), runs)]
    handles += [plt.Line2D([], [], color="0.3", ls=ls, lw=1.2, label=words) for words, ls in GROUPS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, bbox_to_anchor=(0.5, -0.02),
               frameon=False)
    fig = _finish(fig, (a, b))
    fig.subplots_adjust(bottom=0.25)
    return fig
