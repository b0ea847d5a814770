"""Does the quick proxy rank changes as full scale does? (issue 14)

The GPU screen (scripts/gpu_search.py, studies gpu14_seeds and gpu14_screen) measured one change at a time
against the `final` preset at full scale. PROXY_SPEC makes the same changes at the quick scale (10k titles,
d64 x 2 layers, 1k vocabulary, CPU fp32) on top of the final recipe, so that each change has a delta at both
scales. `agreement` pairs them: the sign of each delta, and the rank correlation over all pairs.
"""
from __future__ import annotations

import math

import pandas as pd

from .config import PRESETS
from .verdicts import fold_seed_labels

# the quick profile's shape, the final preset's recipe
PROXY_BASE = {"preset": "final", "d_model": 64, "n_head": 2, "n_layer": 2, "vocab_size": 1024, "evals_per_epoch": 1}
PROXY_REF_SEEDS = (1338,)             # besides the config's own seed, for the proxy's own seed spread
# The GPU screen (scripts/gpu_search.py): one change each against the final preset at full scale, most
# promising first (the order in which the second device call took them; the first took the first six).
SCREEN = {
    "wd0.2": dict(weight_decay=0.2),
    "relu2": dict(mlp="relu2"),
    "softcap30": dict(logit_softcap=30.0),
    "drop0.1": dict(dropout=0.1),
    "decay0.4": dict(decay_frac=0.4),
    "zero_proj": dict(zero_proj=True),
    "embed_lr0.01": dict(embed_lr=0.01),
    "muon_lr0.04": dict(muon_lr=0.04),
    "muon_lr0.01": dict(muon_lr=0.01),
    "bs32": dict(batch_size=32),
    "v3k": dict(vocab_size=3072),
    "v6k": dict(vocab_size=6144),
    "decay0.6": dict(decay_frac=0.6),
    "softcap15": dict(logit_softcap=15.0),
    "title_mask": dict(attn_mask="title"),
    "block256": dict(block_size=256),
    "lr4e-3": dict(lr=4e-3),
    "head_lr1e-3": dict(head_lr=1e-3),
    "muon_mom0.9": dict(muon_momentum=0.9),
    "emb_drop0.1": dict(emb_dropout=0.1),
    "L6": dict(n_layer=6),
    "d256": dict(d_model=256, n_head=4),
    "min_lr0": dict(min_lr_frac=0.0),
    "v5k": dict(vocab_size=5120),
    "wd0.5": dict(weight_decay=0.5),
    "wd0.1": dict(weight_decay=0.1),
    "drop0.1-wd0.2": dict(dropout=0.1, weight_decay=0.2),
    "warmup0": dict(warmup_frac=0.0),
    "bs32-lr0.7x": dict(batch_size=32, muon_lr=0.014, lr=1.4e-3),
    "embed_lr0.03": dict(embed_lr=0.03),
    "decay0.3": dict(decay_frac=0.3),
    "ema0.995": dict(ema=0.995),
    "drop0.03": dict(dropout=0.03),
}
# the changes made again on the proxy: shape and vocabulary changes are left out (they mean something else at
# d64 x 2 layers with a 1k vocabulary), and, to keep the study near 17 runs, most of those whose full-scale
# effect is within twice the final preset's seed spread (decay0.4 and zero_proj stay as near-zero cases)
PROXY_LABELS = ("relu2", "embed_lr0.01", "wd0.2", "wd0.5", "drop0.1", "decay0.4", "softcap15", "zero_proj",
                "muon_lr0.04", "muon_lr0.01", "bs32", "lr4e-3", "title_mask", "block256")
PROXY_CHANGES = {**{k: SCREEN[k] for k in PROXY_LABELS}, "attn0": dict(attn_dropout=0.0)}
PROXY_STUDY = "14_proxy"
PROXY_SPEC = {"base": PROXY_BASE,
              "points": {"final": {}, **{f"final-s{s}": {"train_seed": s} for s in PROXY_REF_SEEDS},
                         **PROXY_CHANGES}}
# The second GPU screen (scripts/gpu_screen2.py, study gpu14_screen2): one change each against `final2`, ideas
# of issue 14 the first screen did not try. None changes the matmul shapes, so none changes the CPU cost much
# (value_embed adds a lookup and an add per layer, z-loss a log-sum-exp over the logits, ns3 saves two of
# Muon's five Newton-Schulz iterations). The reference is final2's three GPU seeds (the gpu14_stack runs: the
# same configs, so the same hashes).
SCREEN2_BASE = {"preset": "final2"}
SCREEN2_REF_SEEDS = (1338, 1339)
SCREEN2 = {
    "value_embed": dict(value_embed=True),
    "unet": dict(unet=True),
    "sqrt_cooldown": dict(decay_shape="sqrt"),
    "zloss1e-4": dict(z_loss=1e-4),
    "drop_path0.1": dict(drop_path=0.1),
    "ema0.99": dict(ema=0.99),
    "nesterov_off": dict(muon_nesterov=False),
    "ns3": dict(muon_ns_steps=3),
    "tied": dict(tie_embeddings=True),
    "drop0": dict(dropout=0.0),
    "drop0.03": dict(dropout=0.03),
    "embed_lr0.02": dict(embed_lr=0.02),
}
SCREEN2_SPEC = {"base": SCREEN2_BASE,
                "points": {"final2": {}, **{f"final2-s{s}": {"train_seed": s} for s in SCREEN2_REF_SEEDS}, **SCREEN2}}

# What the second screen stacked (gpu14_stack2; scripts/gpu_screen2.py chose it: every change beyond twice
# final2's seed spread, at least 0.001), and the third screen: one change each against that stack, mostly around
# the EMA, its one large gain (study gpu14_screen3, one seed each; its reference is the stack's three seeds).
STACK2 = {k: v for k, v in PRESETS["final3"].items() if PRESETS["final2"].get(k) != v}   # preset final3
SCREEN3_BASE = {"preset": "final2", **STACK2}
SCREEN3 = {
    "ema0.98": dict(ema=0.98),
    "ema0.995": dict(ema=0.995),
    "ema0.997": dict(ema=0.997),
    "muon_lr0.03": dict(muon_lr=0.03),
    "lr3e-3": dict(lr=3e-3),
    "decay0.1": dict(decay_frac=0.1),
    "decay0.3": dict(decay_frac=0.3),
    "drop0.07": dict(dropout=0.07),
    "wd0.1": dict(weight_decay=0.1),
    "embed_lr0.03": dict(embed_lr=0.03),
    "min_lr0": dict(min_lr_frac=0.0),
    "bs32": dict(batch_size=32),
    "muon_mom0.9": dict(muon_momentum=0.9),
    "warmup0.02": dict(warmup_frac=0.02),
}
SCREEN3_SPEC = {"base": SCREEN3_BASE,
                "points": {"stack": {}, **{f"stack-s{s}": {"train_seed": s} for s in SCREEN2_REF_SEEDS}, **SCREEN3}}

# The fourth screen (study gpu14_screen4), against the same stack: where the parameters go at about the stack's
# CPU cost (matmul FLOPs per token ~ 12 L d^2 + d V, with the MLP's 8 L d^2 set by mlp_mult = 4), ensembles of
# smaller models at that cost (Kim et al. 2025: in data-limited training an ensemble can beat one larger model),
# what twice the cost buys either way (a CPU with native bf16 has about that), and AdamW/clipping knobs no screen
# tried. weight_decay=0.1 (the third screen's best, one seed) gets two more seeds.
SCREEN4 = {
    "L6-mlp3": dict(n_layer=6, mlp_mult=3),                  # same FLOPs: a sixth block, narrower MLPs
    "L7-mlp2": dict(n_layer=7, mlp_mult=2),                  # 0.95x
    "d160-L7": dict(d_model=160, n_head=4, n_layer=7),       # 0.94x
    "d224-L4": dict(d_model=224, n_head=4, n_layer=4),       # 1.11x
    "h6": dict(n_head=6),                                    # head size 32
    "h2": dict(n_head=2),                                    # head size 96
    "ens2-d128": dict(ensemble=2, d_model=128, n_head=2),    # 1.01x: two models of half the cost
    "ens3-d96": dict(ensemble=3, d_model=96, n_head=2),      # 0.95x
    "d128": dict(d_model=128, n_head=2),                     # one member of ens2-d128 alone (0.50x)
    "ens2": dict(ensemble=2),                                # 2x: two stacks
    "d256-L6": dict(d_model=256, n_head=4, n_layer=6),       # 1.92x: one larger model
    "beta2_0.95": dict(beta2=0.95),
    "beta1_0.8": dict(beta1=0.8),
    "clip0": dict(grad_clip=0.0),
    "clip0.5": dict(grad_clip=0.5),
    "head_lr1e-3": dict(head_lr=1e-3),
    "muon_lr0.015": dict(muon_lr=0.015),
    "lr1.5e-3": dict(lr=1.5e-3),
    "wd0.1": SCREEN3["wd0.1"],                               # held: the third screen's run
    **{f"wd0.1-s{s}": {**SCREEN3["wd0.1"], "train_seed": s} for s in SCREEN2_REF_SEEDS},
}
# the second call: more seeds for the two points that beat the stack by most (ens2, d256-L6), an ensemble of
# two d160 models (1.47x), three stacks (3x), and the three small gains of the first call (wd0.1 over 3 seeds, h2, beta1_0.8)
# together at the stack's cost, over three seeds
STACK4 = {k: v for k, v in PRESETS["final4"].items() if PRESETS["final3"].get(k) != v}   # preset final4
SCREEN4.update({
    **{f"{k}-s{s}": {**SCREEN4[k], "train_seed": s} for k in ("ens2", "d256-L6") for s in SCREEN2_REF_SEEDS},
    "ens2-d160": dict(ensemble=2, d_model=160, n_head=2),
    "ens3": dict(ensemble=3),                                # 3x
    "ens2-wd-h2-b1": dict(ensemble=2, **STACK4),             # 2x
    "wd-h2-b1": STACK4, **{f"wd-h2-b1-s{s}": {**STACK4, "train_seed": s} for s in SCREEN2_REF_SEEDS},
})


# The fifth screen (study gpu14_screen5), against preset final4 (its three GPU seeds are the fourth screen's
# wd-h2-b1 runs: same hash). Two questions. Does anything at final4's cost still help once weight decay, two heads
# and beta1 0.8 are in (the neighbours of its tuned values, one seed each)? And the ensembles over seeds: three
# final4 models (3x, the one way below 0.63 the fourth screen found, there on final3 and with one seed), two (2x),
# and two smaller ones at about 1.2x (what a CPU with native bf16 might fit in the 60 minutes).
SCREEN5_BASE = {"preset": "final4"}
SCREEN5 = {
    **{f"ens3{'' if s is None else f'-s{s}'}": dict(ensemble=3, **({} if s is None else {"train_seed": s}))
       for s in (None, *SCREEN2_REF_SEEDS)},                 # 3x, listed first: the longest runs start first
    **{f"ens2{'' if s is None else f'-s{s}'}": dict(ensemble=2, **({} if s is None else {"train_seed": s}))
       for s in (None, *SCREEN2_REF_SEEDS)},                 # 2x (seed 1337: the fourth screen's ens2-wd-h2-b1)
    "ens2-d144": dict(ensemble=2, d_model=144),              # 1.22x (two heads of 72)
    "ens2-d160-L4": dict(ensemble=2, d_model=160, n_layer=4),  # 1.26x
    "drop0.03": dict(dropout=0.03),
    "drop0.08": dict(dropout=0.08),
    "attn_drop0": dict(attn_dropout=0.0),
    "wd0.2": dict(weight_decay=0.2),
    "beta1_0.7": dict(beta1=0.7),
    "h1": dict(n_head=1),                                    # one head of 192
    "muon_lr0.025": dict(muon_lr=0.025),
    "lr2.5e-3": dict(lr=2.5e-3),
    "embed_lr0.03": dict(embed_lr=0.03),
    "ema0.995": dict(ema=0.995),
    "decay0.3": dict(decay_frac=0.3),
}
# the second call: the three 1x changes nearest to helping (dropout 0.03: -0.0014, lr 2.5e-3 and decay 0.3:
# -0.0010 each, one seed each) stacked on final4 over three seeds, the stack without each, the stack with the next
# two (attention dropout 0, embedding LR 0.03), and two more seeds of the 1.22x ensemble
STACK5 = dict(dropout=0.03, lr=2.5e-3, decay_frac=0.3)
SCREEN5.update({
    "stack5": STACK5, **{f"stack5-s{s}": {**STACK5, "train_seed": s} for s in SCREEN2_REF_SEEDS},
    **{f"stack5-minus-{k}": {j: v for j, v in STACK5.items() if j != k} for k in STACK5},
    "stack5-attn0-emb0.03": {**STACK5, "attn_dropout": 0.0, "embed_lr": 0.03},
    **{f"ens2-d144-s{s}": {**SCREEN5["ens2-d144"], "train_seed": s} for s in SCREEN2_REF_SEEDS},
})
SCREEN5_SPEC = {"base": SCREEN5_BASE,
                "points": {"final4": {}, **{f"final4-s{s}": {"train_seed": s} for s in SCREEN2_REF_SEEDS},
                           **SCREEN5}}

def relative_cost(cfg, ref) -> float:
    """Matmul FLOPs per token of `cfg` over `ref`'s (two Configs): ensemble x (n_layer x (4 + 2 mlp_mult) x
    d_model^2 + d_model x vocab_size), the attention projections, the MLP and the head; attention's own
    T x d_model per layer is left out (about a tenth at d_model 192, block 128)."""
    def flops(c) -> float:
        return c.ensemble * (c.n_layer * (4 + 2 * c.mlp_mult) * c.d_model ** 2 + c.d_model * c.vocab_size)
    return flops(cfg) / flops(ref)


SCREEN4_SPEC = {"base": SCREEN3_BASE,
                "points": {"stack": {}, **{f"stack-s{s}": {"train_seed": s} for s in SCREEN2_REF_SEEDS}, **SCREEN4}}

# The full-data proxy (study gpu14_mirror): the quick proxy's small model (d64 x 2 layers) on the full data
# (100k titles, the final preset's 4k vocabulary, 7 epochs), so that only the model is small. Same changes as
# the quick mirror, to be set against the same GPU screen.
MIRROR_BASE = {"preset": "final", "d_model": 64, "n_head": 2, "n_layer": 2}
MIRROR_STUDY = "gpu14_mirror"
MIRROR_SPEC = {"base": MIRROR_BASE,
               "points": {"final": {}, **{f"final-s{s}": {"train_seed": s} for s in PROXY_REF_SEEDS},
                          **PROXY_CHANGES}}


def deltas(frame: pd.DataFrame, changes: list[str], ref: str = "final") -> tuple[dict[str, float], float, float]:
    """({change: its mean official loss - the reference's}, reference mean, reference seed std) from a study
    frame (columns label, status, final_val_loss; extra seeds under "<label>-s<seed>" count for their point);
    changes without a finished run are left out."""
    done = fold_seed_labels(frame[frame["status"] == "finished"]).groupby("label")["final_val_loss"]
    if ref not in done.groups:
        return {}, math.nan, math.nan
    mean, sd = done.mean(), done.std()
    return {k: float(mean[k] - mean[ref]) for k in changes if k in mean.index}, float(mean[ref]), float(sd[ref])


def agreement(full: pd.DataFrame, quick: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per change measured at both scales (delta at each, whether the signs agree, whether the full
    delta is outside twice the full reference's seed spread), and the summary: pairs, sign agreement,
    Spearman rank correlation. `full` is the GPU screen (verdicts.screen_frame: the final preset's seeds,
    attn0's seeds and the one-change points), `quick` the proxy mirror's study frame."""
    changes = list(PROXY_CHANGES)
    d_full, m_full, sd_full = deltas(full, changes)
    d_quick, m_quick, sd_quick = deltas(quick, changes)
    rows = [{"change": k, "full": d_full[k], "quick": d_quick[k], "same_sign": (d_full[k] > 0) == (d_quick[k] > 0),
             "full_clear": abs(d_full[k]) > 2 * sd_full}
            for k in changes if k in d_full and k in d_quick]
    table = pd.DataFrame(rows)
    summary = {"pairs": len(table), "full_reference": m_full, "full_seed_sd": sd_full,
               "quick_reference": m_quick, "quick_seed_sd": sd_quick}
    if len(table):
        clear = table[table["full_clear"]]
        summary.update(sign_agreement=float(table["same_sign"].mean()),
                       clear_pairs=len(clear), clear_sign_agreement=float(clear["same_sign"].mean()) if len(clear) else math.nan,
                       spearman=float(table["full"].rank().corr(table["quick"].rank())))
    return table, summary


# Truncation as a proxy: the screen's own runs read part-way. Vocabulary changes move the official metric
# through its coverage, not the model; the stack is not one change.
TRUNCATION_SKIP = ("v3k", "v5k", "v6k", "stack")


def truncation_agreement(screen: pd.DataFrame, curves: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """Would stopping early rank the changes as the finished runs do? For each evaluation epoch of the GPU
    screen (verdicts.screen_frame; curves: {hash: results.read_curve frame with its run's `epochs`,
    `max_steps` and `evals_per_epoch`}), every one-change point's validation loss minus the reference's mean at that epoch, set
    against its final delta: sign agreement (all pairs and the final-clear ones) and Spearman correlation.
    The reference's seed spread is read at the end, as for the final verdicts. The summary carries the deltas
    (epoch x change) and which final deltas are beyond twice that spread."""
    ok = screen[(screen["status"] == "finished") & ~screen["label"].isin(TRUNCATION_SKIP)]
    rows = []
    for r in ok.itertuples():
        c = curves.get(r.hash)
        if c is None or c.empty:
            continue
        for step, loss, epochs, max_steps, per in zip(c["step"], c["loss"], c["epochs"], c["max_steps"],
                                                     c["evals_per_epoch"]):
            if step > 1:  # the step-1 reading is the untrained model; the others sit at multiples of 1/per epoch
                rows.append({"label": r.label, "hash": r.hash, "epoch": round(step * epochs / max_steps * per) / per,
                             "loss": loss})
    if not rows:
        return pd.DataFrame(), {}
    long = pd.DataFrame(rows)
    mean = long.groupby(["epoch", "label"])["loss"].mean().unstack("label")
    if "final" not in mean.columns:
        return pd.DataFrame(), {}
    delta = mean.sub(mean["final"], axis=0).drop(columns="final")
    end = delta.index.max()
    final = delta.loc[end]
    ref_end = long[(long["label"] == "final") & (long["epoch"] == end)]["loss"]
    sd = float(ref_end.std())
    clear = final.abs() > 2 * sd
    out = []
    for epoch, d in delta.iterrows():
        both = d.notna() & final.notna()
        same = (d[both] > 0) == (final[both] > 0)
        out.append({"epoch": epoch, "fraction": epoch / end, "pairs": int(both.sum()),
                    "sign_agreement": float(same.mean()),
                    "clear_sign_agreement": float(same[clear[both]].mean()) if clear[both].any() else math.nan,
                    "spearman": float(d[both].rank().corr(final[both].rank()))})
    return pd.DataFrame(out), {"final_seed_sd": sd, "clear_pairs": int(clear.sum()), "pairs": int(final.notna().sum()),
                               "deltas": delta, "clear": clear}
