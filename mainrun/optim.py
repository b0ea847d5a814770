"""Optimizers, parameter groups and learning-rate schedules.

Schedules are pure functions of the optimizer step returning a multiplier of the peak LR; the trainer writes
`peak * multiplier` into every param group before each step, so one schedule drives Muon + AdamW alike.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from .config import Config, code_version

REFERENCE_BATCH = 64  # the baseline's sequences per optimizer step, for linear LR scaling


# ----------------------------------------------------------------------------- schedules
def lr_multiplier(cfg: Config, step: int, total: int) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based) out of `total`."""
    warmup = int(round(cfg.warmup_frac * total))
    floor = cfg.min_lr_frac
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine" and warmup == 0:
        # 1) the original: CosineAnnealingLR(T_max=total) stepped once per optimizer step
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total))
    # 1) linear warmup from 1/warmup to 1
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule in ("cosine", "warmup_cosine"):
        # 2) cosine from 1 at the end of warmup down to the floor at the last step
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: 2) stable at 1, then 3) decay to the floor over the last decay_frac of steps, linear or 1-sqrt
    decay = int(round(cfg.decay_frac * total))
    if step < total - decay:
        return 1.0
    progress = (step - (total - decay) + 1) / max(1, decay)
    if cfg.decay_shape == "sqrt":
        progress = math.sqrt(progress)
    return 1.0 - (1.0 - floor) * progress


def peak_lr(cfg: Config) -> float:
    """Peak LR after the optional linear scaling rule for the effective batch."""
    scale = cfg.batch_size * cfg.grad_accum / REFERENCE_BATCH if cfg.lr_scaling == "linear" else 1.0
    return cfg.lr * scale


# ----------------------------------------------------------------------------- param groups
def as_member(name: str) -> str:
    """A parameter's name inside its model: an Ensemble's members.<i>.x is x, as in a single GPT."""
    return re.sub(r"^members\.\d+\.", "", name)


def param_groups(model: nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Which tensors get weight decay and which may use Muon: hidden (2-D weights in the blocks: Muon
    candidates, decayed), embed (token/position embeddings and the head) and other (norms, biases)."""
    groups: dict[str, list] = {"hidden": [], "embed": [], "other": []}
    for name, p in model.named_parameters():      # a tied tensor comes once, under its first name
        if not p.requires_grad:
            continue
        name = as_member(name)                     # an Ensemble's member parameters group as a GPT's
        if name.startswith("blocks.") and p.ndim == 2:
            groups["hidden"].append(p)
        elif "emb" in name or name.startswith("head."):
            groups["embed"].append(p)
        else:
            groups["other"].append(p)
    return groups


def _newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                        eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, same coefficients and steps, in fp32."""
    a, b, c = ns_coefficients
    x = grad.float()
    wide = x.size(0) > x.size(1)
    if wide:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class Fp32Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iteration in fp32 (muon_ns=fp32), for CPUs without native bf16:
    there bf16 matmuls run at ~1.3 GFLOP/s (results/bench) and Muon's step took 4 of 7.6 s for a 4M model."""

    def step(self, closure=None):
        import torch.optim._muon as impl
        original = impl._zeropower_via_newtonschulz   # torch's bf16 iteration, swapped for this step only
        impl._zeropower_via_newtonschulz = _newton_schulz_fp32
        try:
            return super().step(closure)
        finally:
            impl._zeropower_via_newtonschulz = original


def _adamw_rest(cfg: Config, model: nn.Module, g: dict[str, list], lr: float) -> list[dict]:
    """AdamW groups of the embeddings, head and norms/biases (no weight decay). One group unless embed_lr or
    head_lr is set; then the embeddings and an untied head get their own LRs (a tied head is the embedding)."""
    if cfg.embed_lr < 0 and cfg.head_lr < 0:
        return [{"params": g["embed"] + g["other"], "weight_decay": 0.0}]
    # an Ensemble's heads are members.<i>.head.weight; code version 1 looked for "head." only and found none
    name = as_member if code_version(cfg) >= 2 else (lambda n: n)  # noqa: E731
    head = {id(p) for n, p in model.named_parameters() if name(n).startswith("head.")}
    emb = [p for p in g["embed"] if id(p) not in head]
    heads = [p for p in g["embed"] if id(p) in head]
    pick = lambda v: lr if v < 0 else v  # noqa: E731
    groups = [{"params": g["other"], "weight_decay": 0.0, "lr": lr},     # first: the LR the log shows
              {"params": emb, "weight_decay": 0.0, "lr": pick(cfg.embed_lr)},
              {"params": heads, "weight_decay": 0.0, "lr": pick(cfg.head_lr)}]
    return [x for x in groups if x["params"]]


def build_optimizers(cfg: Config, model: nn.Module, device: str) -> list[torch.optim.Optimizer]:
    """The optimizer(s) for a config; each param group carries its peak LR in 'peak_lr'."""
    lr = peak_lr(cfg)
    g = param_groups(model)
    fused = {"fused": True} if device == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        # the original: one group, weight decay on everything (0.0 in the baseline)
        opts = [torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, foreach=True)]
    elif cfg.optimizer == "adamw":
        opts = [torch.optim.AdamW(
            [{"params": g["hidden"], "weight_decay": cfg.weight_decay}, *_adamw_rest(cfg, model, g, lr)],
            lr=lr, betas=(cfg.beta1, cfg.beta2), **fused)]
    else:  # muon for hidden matrices, AdamW for the rest
        muon = Fp32Muon if cfg.muon_ns == "fp32" else torch.optim.Muon
        opts = [muon(g["hidden"], lr=cfg.muon_lr, weight_decay=cfg.weight_decay,
                    momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov, ns_steps=cfg.muon_ns_steps),
                torch.optim.AdamW(_adamw_rest(cfg, model, g, lr), lr=lr, betas=(cfg.beta1, cfg.beta2), **fused)]
    for opt in opts:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return opts


def set_lr(opts: list[torch.optim.Optimizer], multiplier: float) -> float:
    """Write peak * multiplier into every group; returns the last optimizer's first LR (AdamW's under muon)."""
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
    return opts[-1].param_groups[0]["lr"]


def describe_groups(model: nn.Module) -> dict[str, int]:
    """Parameter counts per group, printed at the start of a run."""
    return {k: sum(p.numel() for p in v) for k, v in param_groups(model).items()}

