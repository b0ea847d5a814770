"""Recipes and the ladder: data, no logic.

PRESETS are named recipes: overrides of the Config defaults, which are the original Mainrun train.py ("baseline").
LADDER is the one table of the project's rungs, in order: notebooks, report and tests read it. Adding a rung
is one entry here (plus its preset, if it is a new recipe) and a record folder under records/.
"""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},
    # Epic 1 of the seed plan: AdamW with linear warmup then cosine to 10% of peak.
    "epic1": dict(optimizer="adamw", lr=3e-4, weight_decay=0.1, beta1=0.9, beta2=0.999,
                  schedule="warmup_cosine", warmup_frac=0.05, min_lr_frac=0.1),
    # Epic 2 on top of Epic 1: RMSNorm and rotary positions.
    "epic2": dict(optimizer="adamw", lr=3e-4, weight_decay=0.1, schedule="warmup_cosine",
                  warmup_frac=0.05, min_lr_frac=0.1, norm="rmsnorm", pos="rope"),
    # The final configuration: the recipe of the small models the full-scale GPU studies kept, at a size whose
    # 7 epochs fit 60 minutes on 2 AVX2 CPU cores (records/2026-11-26-final/).
    "final": dict(optimizer="muon", muon_ns="fp32", lr=2e-3, weight_decay=0.05, schedule="wsd",
                  warmup_frac=0.05, min_lr_frac=0.1, dropout=0.05, pos="rope", init="scaled_residual",
                  qk_norm=True, tie_embeddings=False, d_model=192, n_head=3, n_layer=5, vocab_size=4096,
                  evals_per_epoch=2),
}
# Each later recipe stacks on the one before the one-change wins of a round of GPU screens (beating the reference's
# seed mean by more than twice its seed spread); the round's specs and numbers are its records/ folder (LADDER).
# final2: a ReLU^2 MLP and an AdamW LR of 0.01 for the token embedding; the same matmuls as final.
PRESETS["final2"] = dict(PRESETS["final"], mlp="relu2", embed_lr=0.01)
# final3: weights averaged by an EMA (0.99) for evaluation, U-net skips, embedding LR 0.02, the 1-sqrt cooldown and
# 3 Newton-Schulz steps in Muon; the same matmul shapes as final2.
PRESETS["final3"] = dict(PRESETS["final2"], ema=0.99, unet=True, embed_lr=0.02, decay_shape="sqrt",
                         muon_ns_steps=3)
# final4, the tuned single model: weight decay 0.1, two heads of 96, AdamW beta1 0.8, at final3's cost.
PRESETS["final4"] = dict(PRESETS["final3"], weight_decay=0.1, n_head=2, beta1=0.8)
# final7: three final4 models trained side by side and averaged in probability (3x final4's matmuls), compiled,
# one validation pass per epoch. Meant for a CPU with native bf16 (precision=bf16); on an AVX2-only CPU it costs
# three times final4, which alone takes over the hour there.
PRESETS["final7"] = dict(PRESETS["final4"], ensemble=3, compile=True, evals_per_epoch=1)
# final8: final7 with dropout masks hashed from the element index (dropout_rng=hash: the same dropout, drawn
# without torch's bernoulli, about a quarter of a CPU step), under code version 2 (each member's head at lr).
PRESETS["final8"] = dict(PRESETS["final7"], dropout_rng="hash")

# The ladder, in order. rung: its name in results/studies/<profile>/ladder.json; record: its records/ folder
# (README, specs, logs); preset: the recipe (None where a study chose the rung); study: the full-scale study
# holding its CPU seeds under the label `rung` (or None); single: one model (False for an ensemble); what: the
# rung in plain words, for the report.
LADDER: tuple[dict[str, Any], ...] = (
    dict(rung="baseline", record="2026-11-25-cpu-baseline", preset="baseline", study=None, single=True,
         what="the original train.py: SGD with cosine decay, 27.2M parameters"),
    dict(rung="epic1", record="2026-11-25-epic1-optimizer", preset="epic1", study=None, single=True,
         what="AdamW with linear warmup and cosine decay"),
    dict(rung="epic2", record="2026-11-25-epic2-architecture", preset="epic2", study=None, single=True,
         what="Epic 1 plus RMSNorm and rotary positions"),
    dict(rung="epic3", record="2026-11-25-epic3-sweeps", preset=None, study=None, single=True,
         what="Epic 2 with learning rate, weight decay, dropout and batch size tuned on the proxy"),
    dict(rung="final", record="2026-11-26-final", preset="final", study="04_final", single=True,
         what="a small model (3.8M) with Muon, a warmup-stable-decay schedule, RoPE and QK-norm"),
    dict(rung="final2", record="2026-11-27-final2", preset="final2", study="14_final2", single=True,
         what="final plus a ReLU-squared MLP and a faster embedding learning rate"),
    dict(rung="final3", record="2026-11-27-final3", preset="final3", study="14_final3", single=True,
         what="final2 plus weight EMA, U-net skips, a square-root cooldown and three Newton-Schulz steps"),
    dict(rung="final4", record="2026-11-27-final4", preset="final4", study="14_final4", single=True,
         what="the tuned single model: final3 with weight decay 0.1, two heads and AdamW beta1 0.8"),
    dict(rung="final7", record="2026-12-01-final7", preset="final7", study="14_final7", single=False,
         what="a three-model ensemble: three final4 models trained side by side, averaged in probability"),
    dict(rung="final8", record="2026-12-08-final8", preset="final8", study="final8", single=False,
         what="final7 with each member's head at its own learning rate (the code-version-1 defect fixed) and "
              "hashed dropout masks"),
)
