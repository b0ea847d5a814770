"""A GPT with switchable parts. With the defaults it is the original Mainrun model.

Parity note: the baseline must draw the same random numbers as the original, so
modules are created in the original's order (token_emb, pos_emb, drop, blocks
[ln1, ln2, attn[qkv, proj], mlp], ln_f, head) and re-initialised by one
`apply` pass afterwards. Attention goes through F.scaled_dot_product_attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    d_model: int
    dropout: float
    norm: str = "layernorm"
    pos: str = "learned"
    init: str = "normal"
    mlp: str = "gelu"
    mlp_mult: int = 4                   # hidden width of gelu / relu2 MLPs in multiples of d_model
    tie_embeddings: bool = True
    qk_norm: bool = False
    attn_dropout: float = -1.0          # dropout on the attention probabilities; -1 = `dropout`
    emb_dropout: float = -1.0           # dropout on the embedding output; -1 = `dropout`
    zero_proj: bool = False             # residual-writing projections start at zero
    logit_softcap: float = 0.0          # c * tanh(logits / c); 0 = off
    drop_path: float = 0.0              # stochastic depth of the last block (linear from 0 at the first)
    unet: bool = False                  # U-net skips from the first half of the blocks to the last
    value_embed: bool = False           # a value embedding added to every layer's attention values
    dropout_rng: str = "torch"          # torch (its bernoulli masks) | hash (counter-hash masks, see hash_dropout)


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


def hash_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout whose mask is a hash of each element's index and one random 30-bit seed per call.

    Why: on a CPU, drawing torch's masks costs about a quarter of a compiled training step of the small models
    (results/bench); this mask is a few integer operations that torch.compile fuses into the kernel that uses
    it, and the seed comes from torch's generator, so a run stays reproducible and resumable. The hash is
    Wellons' lowbias32 in int32 arithmetic (a wrapping multiply; `& 0xFFFF` after `>> 16` makes the shift
    logical); an element is dropped when the hash's low 24 bits fall below p * 2^24."""
    if not training or p == 0.0:
        return x
    seed = torch.randint(0, 2**30, (), device=x.device, dtype=torch.int32)
    h = torch.arange(x.numel(), device=x.device, dtype=torch.int32).view(x.shape) + seed * 747796405
    h = (h ^ ((h >> 16) & 0xFFFF)) * 0x7FEB352D
    h = (h ^ ((h >> 15) & 0x1FFFF)) * -2073450869         # 0x846CA68B as a signed int32
    h = h ^ ((h >> 16) & 0xFFFF)
    keep = (h & 0xFFFFFF) >= round(p * 2**24)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


class HashDropout(nn.Module):
    """nn.Dropout with hash_dropout's masks."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hash_dropout(x, self.p, self.training)


DROPOUTS = {"torch": nn.Dropout, "hash": HashDropout}


def rope_cache(T: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, head_dim/2] for rotary position embeddings."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels. x: [B, H, T, D]."""
    T = x.size(-2)
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:T], sin[:T]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        # with no dropout on the attention probabilities, SDPA can take its fused (flash) CPU kernel
        self.dropout = cfg.dropout if cfg.attn_dropout < 0 else cfg.attn_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = DROPOUTS[cfg.dropout_rng](cfg.dropout)
        self.hashed = cfg.dropout_rng == "hash"
        self.qk_norm = cfg.qk_norm
        if cfg.value_embed:
            self.ve_gate = nn.Parameter(torch.full((1,), 0.5))
        self.rope = cfg.pos == "rope"
        if self.rope:
            cos, sin = rope_cache(cfg.block_size, self.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        # [B, T, 3C] -> [B, T, 3, H, D] -> 3 x [B, H, T, D]
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if ve is not None:  # the value embedding of each token, [B, T, C] -> [B, H, T, D]
            v = v + (self.ve_gate * ve.view(B, T, self.n_head, self.head_dim).transpose(1, 2)).to(v.dtype)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if self.rope:
            q, k = apply_rope(q, self.rope_cos, self.rope_sin), apply_rope(k, self.rope_cos, self.rope_sin)
        p = self.dropout if self.training else 0.0
        if self.hashed and p > 0:   # SDPA draws its own masks: the same attention with hashed ones, spelled out
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5             # [B, H, T, T]
            allowed = mask if mask is not None else torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            y = hash_dropout(att, p) @ v
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)  # [B, H, T, D] -> [B, T, C]
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp in ("gelu", "relu2"):
            self.fc = nn.Linear(cfg.d_model, cfg.mlp_mult * cfg.d_model)
            self.act = nn.GELU() if cfg.mlp == "gelu" else None
            self.out = nn.Linear(cfg.mlp_mult * cfg.d_model, cfg.d_model)
        else:  # swiglu: hidden 8d/3 rounded up to 64 keeps the parameter count near the GELU MLP's
            hidden = 64 * math.ceil(8 * cfg.d_model / 3 / 64)
            self.fc = nn.Linear(cfg.d_model, 2 * hidden)
            self.out = nn.Linear(hidden, cfg.d_model)
        self.drop = DROPOUTS[cfg.dropout_rng](cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            h = self.act(self.fc(x))
        elif self.kind == "relu2":
            h = F.relu(self.fc(x)).square()
        else:
            a, g = self.fc(x).chunk(2, dim=-1)
            h = a * F.silu(g)
        return self.drop(self.out(h))


def drop_branch(y: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random subset of the sequences (rate p), scaling the
    kept ones by 1 / (1 - p) so the expected branch is unchanged; the identity at evaluation."""
    if not training or p == 0.0:
        return y
    keep = torch.empty(y.size(0), *([1] * (y.dim() - 1)), device=y.device, dtype=y.dtype).bernoulli_(1 - p)
    return y * keep / (1 - p)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, drop_path: float = 0.0):
        super().__init__()
        self.ln1 = NORMS[cfg.norm](cfg.d_model)
        self.ln2 = NORMS[cfg.norm](cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                ve: torch.Tensor | None = None) -> torch.Tensor:
        x = x + drop_branch(self.attn(self.ln1(x), mask, ve), self.drop_path, self.training)
        x = x + drop_branch(self.mlp(self.ln2(x)), self.drop_path, self.training)
        return x


def title_mask(idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Boolean attention mask [B, 1, T, T]: causal, and no attention across an <eos>.

    Title number of a position = count of <eos> strictly before it; a query sees a
    key only when both are in the same title (the <eos> ends its own title).
    """
    is_eos = (idx == eos_id).long()
    seg = torch.cumsum(is_eos, dim=1) - is_eos              # [B, T]
    same = seg.unsqueeze(2) == seg.unsqueeze(1)             # [B, T, T]
    T = idx.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    return (same & causal).unsqueeze(1)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.d_model))
        self.drop = DROPOUTS[cfg.dropout_rng](cfg.dropout if cfg.emb_dropout < 0 else cfg.emb_dropout)
        self.blocks = nn.ModuleList([Block(cfg, cfg.drop_path * i / max(1, cfg.n_layer - 1))
                                     for i in range(cfg.n_layer)])
        self.ln_f = NORMS[cfg.norm](cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # optional parts are created after the original's modules, so a model without them draws the same numbers
        if cfg.value_embed:
            self.value_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.unet:
            self.skip_weights = nn.Parameter(torch.ones(cfg.n_layer // 2))
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.head.weight = self.token_emb.weight
        self.eos_id: int | None = None  # set by the trainer when attn_mask == "title"

    def _init_weights(self, module: nn.Module) -> None:
        init = self.cfg.init
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Linear):
            if init == "kaiming" and module is not self.head:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")  # He: std = sqrt(2 / fan_in)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, (CausalSelfAttention, MLP)):
            target = module.proj if isinstance(module, CausalSelfAttention) else module.out  # writes the residual
            if init == "scaled_residual":
                # GPT-2: layers writing into the residual stream start smaller, by 1/sqrt(2 * n_layer)
                nn.init.normal_(target.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
            if self.cfg.zero_proj:
                nn.init.zeros_(target.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.size()
        x = self.token_emb(idx)                   # [B, T, C]
        if self.cfg.pos == "learned":
            x = x + self.pos_emb[:, :T, :]
        x = self.drop(x)
        mask = title_mask(idx, self.eos_id) if self.eos_id is not None else None
        ve = self.value_emb(idx) if self.cfg.value_embed else None
        n_skip = self.cfg.n_layer // 2 if self.cfg.unet else 0
        skips = []
        for i, block in enumerate(self.blocks):
            if n_skip and i >= self.cfg.n_layer - n_skip:   # decoder half: the mirrored encoder block's output
                x = x + self.skip_weights[i - (self.cfg.n_layer - n_skip)] * skips.pop()
            x = block(x, mask, ve)
            if i < n_skip:                                  # encoder half
                skips.append(x)
        logits = self.head(self.ln_f(x))          # [B, T, V]
        if self.cfg.logit_softcap > 0:
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits.float() / c)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
        return logits, loss


class Ensemble(nn.Module):
    """k GPTs trained side by side: each sees the same batch and minimises its own cross-entropy (the loss is
    their mean, so each member's gradient is its own loss's / k), and the prediction is the mean of their
    probabilities. Its logits are log(mean p), which the cross-entropy of `evaluate` scores as -log(mean p).
    A training-mode call with targets returns (None, loss): the step needs no mixture."""

    def __init__(self, members: list[GPT]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    @property
    def eos_id(self) -> int | None:
        return self.members[0].eos_id

    @eos_id.setter
    def eos_id(self, value: int | None) -> None:
        for m in self.members:
            m.eos_id = value

    def num_params(self) -> int:
        return sum(m.num_params() for m in self.members)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        outs = [m(idx, targets) for m in self.members]
        loss = None if targets is None else torch.stack([l for _, l in outs]).mean()
        if self.training and targets is not None:
            # a training step needs only the members' losses: the mixture (k fp32 log-softmaxes over the
            # vocabulary) is for scoring, and skipping it leaves the gradients as they are
            return None, loss
        logp = torch.stack([F.log_softmax(logits.float(), dim=-1) for logits, _ in outs])
        logits = torch.logsumexp(logp, dim=0) - math.log(len(self.members))
        return logits, loss
