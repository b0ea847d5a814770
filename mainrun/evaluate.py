"""The official Mainrun metric, and the full-coverage loss beside it.

`evaluate` keeps the original's arithmetic, always at 64 x 128: the summed token cross-entropy over the full
(64 x 128 + 1)-token spans of the validation ids, divided by the characters of the validation text. The spans
drop the tail of the ids and one target per span, so `full_coverage` also scores every validation target
(windows of 128 tokens, the last one partial).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.nn import functional as F

from .config import EVAL_BATCH, EVAL_BLOCK


def autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _summed_ce(model, xb: torch.Tensor, yb: torch.Tensor, device: str, precision: str) -> float:
    """Summed token cross-entropy of one batch [B, T], computed in fp32 from the model's logits."""
    xb, yb = xb.to(device), yb.to(device)
    with autocast(device, precision):
        logits, _ = model(xb)
    return F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").item()


@torch.inference_mode()
def evaluate(model, val_ids: torch.Tensor, val_chars: int, device: str = "cpu", precision: str = "fp32") -> float:
    """Official loss: sum of token CE over full 64 x 128 spans / characters of the validation text."""
    was_training = model.training
    model.eval()
    losses, span = 0.0, EVAL_BATCH * EVAL_BLOCK + 1
    for ptr in range(0, len(val_ids) - span + 1, span):     # the original's disjoint spans; the tail is dropped
        chunk = val_ids[ptr: ptr + span]
        xb, yb = chunk[:-1].view(EVAL_BATCH, EVAL_BLOCK), chunk[1:].view(EVAL_BATCH, EVAL_BLOCK)
        losses += _summed_ce(model, xb, yb, device, precision)
    model.train(was_training)
    return losses / val_chars


def official_coverage(n_ids: int) -> tuple[int, float]:
    """(targets scored by `evaluate`, fraction of all n_ids - 1 validation targets)."""
    span = EVAL_BATCH * EVAL_BLOCK + 1
    n_spans = max(0, (n_ids - span) // span + 1) if n_ids >= span else 0
    scored = n_spans * EVAL_BATCH * EVAL_BLOCK
    return scored, scored / max(1, n_ids - 1)


@torch.inference_mode()
def full_coverage(model, val_ids: torch.Tensor, val_chars: int, device: str = "cpu",
                  precision: str = "fp32") -> dict[str, float]:
    """Every target ids[1:] scored once, in 128-token windows (64 per batch, last window partial)."""
    was_training = model.training
    model.eval()
    n = len(val_ids) - 1
    total = 0.0
    starts = list(range(0, n, EVAL_BLOCK))
    full = [s for s in starts if s + EVAL_BLOCK <= n]
    for i in range(0, len(full), EVAL_BATCH):
        offs = torch.tensor(full[i: i + EVAL_BATCH])[:, None] + torch.arange(EVAL_BLOCK)[None, :]   # [b, 128]
        total += _summed_ce(model, val_ids[offs], val_ids[offs + 1], device, precision)
    if len(full) < len(starts):                                          # the partial last window
        s = starts[-1]
        total += _summed_ce(model, val_ids[s:n][None], val_ids[s + 1: n + 1][None], device, precision)
    model.train(was_training)
    nats = total / val_chars
    return {"full_loss": nats, "full_bpc": nats / math.log(2), "full_tokens": n}
