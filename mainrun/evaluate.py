"""The official Mainrun metric, and the full-coverage loss beside it.

`evaluate` keeps the original's arithmetic: the summed token cross-entropy over
the full (64 x 128 + 1)-token spans of the validation ids, divided by the number
of characters of the validation text. It is always called at 64 x 128. The spans
drop the tail of the ids and one target per span, so `full_coverage` also scores
every validation target (windows of 128 tokens, the last one partial).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.nn import functional as F

from .config import EVAL_BATCH, EVAL_BLOCK


def iter_full_split(ids: torch.Tensor, block: int, batch: int):
    """The original's evaluation spans: disjoint spans of batch*block+1 tokens; the tail is dropped."""
    span = block * batch + 1
    for ptr in range(0, len(ids) - span + 1, span):
        chunk = ids[ptr: ptr + span]
        yield chunk[:-1].view(batch, block), chunk[1:].view(batch, block)


def autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model, val_ids: torch.Tensor, val_chars: int, device: str = "cpu", precision: str = "fp32") -> float:
    """Official loss: sum of token CE over full 64 x 128 spans / characters of the validation text."""
    was_training = model.training
    model.eval()
    losses = 0.0
    for xb, yb in iter_full_split(val_ids, EVAL_BLOCK, EVAL_BATCH):
        xb, yb = xb.to(device), yb.to(device)
        with autocast(device, precision):
            logits, _ = model(xb)
        V = logits.size(-1)
        losses += F.cross_entropy(logits.float().view(-1, V), yb.view(-1), reduction="sum").item()
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
        idx = torch.tensor(full[i: i + EVAL_BATCH])
        offs = idx[:, None] + torch.arange(EVAL_BLOCK)[None, :]          # [b, 128]
        xb, yb = val_ids[offs].to(device), val_ids[offs + 1].to(device)
        with autocast(device, precision):
            logits, _ = model(xb)
        total += F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").item()
    if len(full) < len(starts):                                          # the partial last window
        s = starts[-1]
        xb, yb = val_ids[s:n].unsqueeze(0).to(device), val_ids[s + 1: n + 1].unsqueeze(0).to(device)
        with autocast(device, precision):
            logits, _ = model(xb)
        total += F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").item()
    model.train(was_training)
    nats = total / val_chars
    return {"full_loss": nats, "full_bpc": nats / math.log(2), "full_tokens": n}
