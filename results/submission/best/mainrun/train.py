"""Mainrun train.py: the ledger run `full-final8-final8-7ca36c0c4295` of the mainrun workbench.

One self-contained script, run by `task train` (`python3 train.py` in mainrun/): it loads the Hacker News titles
(or, with MAINRUN_DATA=/path/to/titles.parquet/.jsonl/.csv set, that file's 'title' column, and says so), trains
a byte-level BPE tokenizer on them and the model below for `epochs` epochs, scores the validation split with
`evaluate()` and writes the original Mainrun script's JSONL events to logs/mainrun.log. The recipe is the
Hyperparameters dataclass; SUBMISSION.md beside this file says what it changes and what it measured. Exported
by the mainrun workbench (`python -m mainrun export`) from mainrun/submission_template.py.
"""
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm import tqdm


@dataclass
class Hyperparameters:
    # --- fixed by the Mainrun rules
    epochs: int = 7                       # passes over the training tokens
    seed: int = 1337                      # shuffle of the titles, initial weights, dropout
    num_titles: int = 100_000             # titles taken after the shuffle
    val_frac: float = 0.1                 # the last fraction of them is the validation split
    # --- tokenizer and batches
    vocab_size: int = 4096                # byte-level BPE vocabulary, trained on the train and validation titles
    block_size: int = 128                 # tokens per sequence; evaluate() scores spans of batch_size x block_size
    batch_size: int = 64                  # sequences per optimizer step
    # --- model
    n_layer: int = 5                      # transformer blocks
    n_head: int = 2                       # attention heads
    d_model: int = 192                    # width of the residual stream
    dropout: float = 0.05                 # dropout on embeddings, attention probabilities and residual branches
    attn_dropout: float = -1.0            # dropout on attention probabilities alone; -1 = dropout
    dropout_rng: str = "hash"             # torch: its dropout masks | hash: masks hashed from the element index
    norm: str = "layernorm"               # layernorm | rmsnorm
    pos: str = "rope"                     # learned position embedding | rope (rotary embeddings of q and k)
    init: str = "scaled_residual"         # normal: std 0.02 | scaled_residual: residual writers / sqrt(2 n_layer)
    mlp: str = "relu2"                    # gelu | relu2 (relu(x)^2); hidden width 4 x d_model
    qk_norm: bool = True                  # RMS-normalise queries and keys per head
    tie_embeddings: bool = False          # the output head shares the token embedding's weights
    unet: bool = True                     # U-net: the first half's block outputs, scaled, enter the last half
    ensemble: int = 3                     # k models trained side by side; predict the mean of their probabilities
    # --- optimisation
    optimizer: str = "muon"               # sgd | adamw | muon (Muon on the hidden matrices, AdamW on the rest)
    lr: float = 0.002                     # peak learning rate (of the AdamW part under muon)
    momentum: float = 0.0                 # SGD momentum
    weight_decay: float = 0.1             # SGD: every tensor; AdamW: the hidden matrices; Muon: its matrices
    beta1: float = 0.8                    # AdamW betas
    beta2: float = 0.999
    embed_lr: float = 0.02                # AdamW peak LR of the embeddings; -1 = lr
    head_lr: float = -1.0                 # AdamW peak LR of an untied output head; -1 = lr
    muon_lr: float = 0.02                 # Muon's peak LR
    muon_momentum: float = 0.95           # Muon's momentum
    muon_nesterov: bool = True            # Nesterov momentum in Muon
    muon_ns_steps: int = 3                # Newton-Schulz iterations per Muon step
    muon_ns: str = "fp32"                 # Newton-Schulz dtype: bf16 | fp32 (for CPUs without native bf16)
    grad_clip: float = 1.0                # max global gradient norm (per ensemble member); 0 = off
    schedule: str = "wsd"                 # cosine | warmup_cosine | wsd (warmup, stable, decay) | constant
    warmup_frac: float = 0.05             # fraction of the steps spent warming up linearly
    min_lr_frac: float = 0.1              # floor of the decay, as a fraction of the peak
    decay_frac: float = 0.2               # wsd: fraction of the steps in the final decay
    decay_shape: str = "sqrt"             # wsd: linear | sqrt (1 - sqrt(progress) cooldown)
    ema: float = 0.99                     # decay of the weights' moving average that evaluate() scores; 0 = off
    # --- execution and log
    evals_per_epoch: int = 1              # validation passes per epoch (plus the first and the last step)
    device: str = "cpu"                   # auto (cuda if available) | cpu | cuda
    precision: str = "bf16"               # fp32 | bf16 (autocast) | auto: bf16 where matmuls have native bf16
    compile: bool = True                  # torch.compile the training forward pass
    log_file: str = "./logs/mainrun.log"  # the JSONL event log


TEST_ENV = "MAINRUN_EXPORT_TEST"   # tests only: a JSON object of fields that replace the values above
DATA_ENV = "MAINRUN_DATA"
HUB_DATASET = "julien040/hacker-news-posts"
EOS = "<eos>"
SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


class JsonlLog:
    """The original's log: one JSON object per line, {"event", "timestamp", **fields}; events are echoed to the
    terminal unless they carry prnt=False (the training steps, as in the original)."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w")

    def log(self, event: str, **kwargs) -> None:
        self.file.write(json.dumps({"event": event, "timestamp": time.time(), **kwargs}) + "\n")
        self.file.flush()
        if kwargs.get("prnt", True):
            tqdm.write(f"{event}: " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))


# ----------------------------------------------------------------------------- data
def load_titles(cache_dir: str = "./data"):
    """The titles as a `datasets.Dataset` and their source: the file named by MAINRUN_DATA if set, else the hub
    dataset (the Taskfile's download step calls this to fill ./data)."""
    from datasets import load_dataset

    path = os.environ.get(DATA_ENV)
    if not path:
        return load_dataset(HUB_DATASET, split="train", cache_dir=cache_dir), f"hub:{HUB_DATASET}"
    kind = SUFFIXES.get(Path(path).suffix.lower())
    if kind is None or not Path(path).is_file():
        raise SystemExit(f"{DATA_ENV}={path!r} is not a titles file; accepted: an existing "
                         f"{', '.join(SUFFIXES)} file with a 'title' column")
    print(f"{DATA_ENV} is set: the titles come from {path}, not from the hub dataset {HUB_DATASET}")
    return load_dataset(kind, data_files=path, split="train", cache_dir=cache_dir), f"file:{Path(path).name}"


def get_titles(num_titles: int, seed: int, val_frac: float):
    """The Mainrun split: shuffle with the seed, the first num_titles titles (stripped), the last val_frac of
    them for validation."""
    ds, source = load_titles()
    ds = ds.shuffle(seed=seed)
    titles = [(t or "").strip() for t in ds.select(range(num_titles))[:num_titles]["title"]]
    n = int(num_titles * (1 - val_frac))
    return titles[:n], titles[n:], source


def train_tokenizer(titles: list, vocab_size: int):
    """Byte-level BPE with the original's special tokens <pad>, <eos>, <unk> (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", EOS, "<unk>"],
                                  show_progress=False)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(titles, trainer)
    return tok


def get_batch(split_ids: torch.Tensor, ptr: int, block_size: int, batch_size: int, device: str):
    """The next batch_size x block_size tokens from ptr (wrapping to 0 at the end) and their next tokens."""
    span = block_size * batch_size + 1
    if ptr + span >= len(split_ids):
        ptr = 0
    chunk = split_ids[ptr: ptr + span]
    x = chunk[:-1].view(batch_size, block_size).to(device)   # [B, T]
    y = chunk[1:].view(batch_size, block_size).to(device)    # [B, T] next-token targets
    return x, y, ptr + block_size * batch_size


def iter_full_split(split_ids: torch.Tensor, block_size: int, batch_size: int, device: str):
    """Disjoint spans of batch_size x block_size + 1 tokens over a split; the tail that fills none is dropped."""
    span = block_size * batch_size + 1
    for ptr in range(0, len(split_ids) - span + 1, span):
        chunk = split_ids[ptr: ptr + span]
        yield chunk[:-1].view(batch_size, block_size).to(device), chunk[1:].view(batch_size, block_size).to(device)


# ----------------------------------------------------------------------------- model
# The model reads its sizes and parts from the Hyperparameters (`cfg`), its vocab_size the tokenizer's.
NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


def hash_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout whose mask is a hash (Wellons' lowbias32, int32 arithmetic) of each element's index and one seed
    drawn from torch's generator per call: on a CPU it costs a fraction of drawing torch's masks, and under
    torch.compile it fuses into the kernel that uses it. An element is dropped when the hash's low 24 bits
    fall below p * 2^24."""
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
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hash_dropout(x, self.p, self.training)


DROPOUTS = {"torch": nn.Dropout, "hash": HashDropout}


def rope_tables(T: int, head_dim: int, base: float = 10000.0):
    """cos and sin of the rotary angles, [T, head_dim / 2]."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the (first half, second half) channel pairs of each head by its position's angle. x: [B, H, T, D]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[: x.size(-2)], sin[: x.size(-2)]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Hyperparameters):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.attn_p = cfg.dropout if cfg.attn_dropout < 0 else cfg.attn_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = DROPOUTS[cfg.dropout_rng](cfg.dropout)
        self.hashed = cfg.dropout_rng == "hash"
        self.qk_norm = cfg.qk_norm
        self.rope = cfg.pos == "rope"
        if self.rope:
            cos, sin = rope_tables(cfg.block_size, self.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        # [B, T, 3C] -> [B, T, 3, H, D] -> 3 x [B, H, T, D]
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if self.rope:
            q, k = apply_rope(q, self.rope_cos, self.rope_sin), apply_rope(k, self.rope_cos, self.rope_sin)
        p = self.attn_p if self.training else 0.0
        if self.hashed and p > 0:     # SDPA draws its own masks: the same attention with hashed ones, spelled out
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5                    # [B, H, T, T]
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = hash_dropout(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1), p) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)    # [B, H, T, D] -> [B, T, C]
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: Hyperparameters):
        super().__init__()
        self.relu2 = cfg.mlp == "relu2"
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.out = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = DROPOUTS[cfg.dropout_rng](cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(x)).square() if self.relu2 else F.gelu(self.fc(x))
        return self.drop(self.out(h))


class Block(nn.Module):
    def __init__(self, cfg: Hyperparameters):
        super().__init__()
        self.ln1 = NORMS[cfg.norm](cfg.d_model)
        self.ln2 = NORMS[cfg.norm](cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: Hyperparameters):
        super().__init__()
        self.cfg = cfg
        # modules are created in this order, then re-initialised by one apply() pass: the order in which they
        # draw random numbers, so that the same seed gives the same weights
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.d_model))
        self.drop = DROPOUTS[cfg.dropout_rng](cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = NORMS[cfg.norm](cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.n_skip = cfg.n_layer // 2 if cfg.unet else 0
        if cfg.unet:
            self.skip_weights = nn.Parameter(torch.ones(self.n_skip))
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.head.weight = self.token_emb.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, (CausalSelfAttention, MLP)) and self.cfg.init == "scaled_residual":
            # GPT-2: the layers that write into the residual stream start smaller, by 1 / sqrt(2 n_layer)
            target = module.proj if isinstance(module, CausalSelfAttention) else module.out
            nn.init.normal_(target.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.size()
        x = self.token_emb(idx)                                    # [B, T, C]
        if self.cfg.pos == "learned":
            x = x + self.pos_emb[:, :T, :]
        x = self.drop(x)
        skips = []
        for i, block in enumerate(self.blocks):
            mirror = i - (self.cfg.n_layer - self.n_skip)          # U-net: the last n_skip blocks take the
            if self.n_skip and mirror >= 0:                        # first n_skip blocks' outputs, mirrored
                x = x + self.skip_weights[mirror] * skips.pop()
            x = block(x)
            if i < self.n_skip:
                skips.append(x)
        logits = self.head(self.ln_f(x))                           # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
        return logits, loss


class Ensemble(nn.Module):
    """k GPTs trained side by side on the same batches, each on its own cross-entropy (the loss is their mean).
    The prediction is the mean of their probabilities; its logits are log(mean p), which a cross-entropy scores
    as -log(mean p). A training call with targets returns (None, loss): a step needs no mixture."""

    def __init__(self, members: list):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        outs = [m(idx, targets) for m in self.members]
        loss = None if targets is None else torch.stack([l for _, l in outs]).mean()
        if self.training and targets is not None:
            return None, loss
        logp = torch.stack([F.log_softmax(logits.float(), dim=-1) for logits, _ in outs])   # [k, B, T, V]
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members)), loss


# ----------------------------------------------------------------------------- optimizers and schedule
class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan, 2024) for 2-D weights: SGD momentum whose update is orthogonalised by a quintic
    Newton-Schulz iteration, scaled by sqrt(max(1, rows / cols)), with decoupled weight decay; the arithmetic
    of torch.optim.Muon, which the original's torch 2.7 lacks. ns_dtype is the iteration's dtype: torch's
    bf16, or fp32 for CPUs whose bf16 matmuls are emulated. Not for embeddings, heads, norms or biases."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float, nesterov: bool, ns_steps: int,
                 ns_dtype: torch.dtype):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    def orthogonalise(self, g: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
        a, b, c = 3.4445, -4.7750, 2.0315
        tall = g.size(0) > g.size(1)
        x = g.to(self.ns_dtype).T if tall else g.to(self.ns_dtype)
        x = x / x.norm().clamp(min=eps)                  # spectral norm at most 1
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - mom)
                update = self.orthogonalise(p.grad.lerp(buf, mom) if group["nesterov"] else buf, group["ns_steps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))


def param_groups(model: nn.Module) -> dict:
    """The one table of parameter groups. hidden: the blocks' 2-D weights (Muon's under muon, the only ones
    AdamW decays); embed: token and position embeddings; head: an untied output head; other: norms, biases,
    skip weights. An ensemble's members (members.<i>.<name>) group like one model's."""
    groups = {"hidden": [], "embed": [], "head": [], "other": []}
    for name, p in model.named_parameters():             # a tied head is listed once, as the embedding
        local = name.split(".", 2)[2] if name.startswith("members.") else name
        if local.startswith("blocks.") and p.ndim == 2:
            groups["hidden"].append(p)
        elif local.startswith("head."):
            groups["head"].append(p)
        elif "emb" in local:
            groups["embed"].append(p)
        else:
            groups["other"].append(p)
    return groups


def build_optimizers(args: Hyperparameters, model: nn.Module, device: str) -> list:
    """The recipe's optimizer(s); each param group keeps its peak LR in 'peak_lr'."""
    g = param_groups(model)
    peak = lambda v: args.lr if v < 0 else v  # noqa: E731
    no_decay = [{"params": g["other"], "lr": args.lr, "weight_decay": 0.0},
                {"params": g["embed"], "lr": peak(args.embed_lr), "weight_decay": 0.0},
                {"params": g["head"], "lr": peak(args.head_lr), "weight_decay": 0.0}]
    fast = {"fused": True} if device == "cuda" else {"foreach": True}

    def adamw(groups: list) -> torch.optim.AdamW:
        return torch.optim.AdamW([x for x in groups if x["params"]], betas=(args.beta1, args.beta2), **fast)

    if args.optimizer == "sgd":
        opts = [torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, foreach=True)]
    elif args.optimizer == "adamw":
        opts = [adamw([{"params": g["hidden"], "lr": args.lr, "weight_decay": args.weight_decay}, *no_decay])]
    else:
        ns_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.muon_ns]
        opts = [Muon(g["hidden"], lr=args.muon_lr, weight_decay=args.weight_decay, momentum=args.muon_momentum,
                     nesterov=args.muon_nesterov, ns_steps=args.muon_ns_steps, ns_dtype=ns_dtype), adamw(no_decay)]
    for group in (group for opt in opts for group in opt.param_groups):
        group["peak_lr"] = group["lr"]
    return opts


def lr_multiplier(args: Hyperparameters, step: int, total: int) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based) of `total`."""
    warmup = int(round(args.warmup_frac * total))
    floor = args.min_lr_frac
    if args.schedule == "constant":
        return 1.0
    if args.schedule == "cosine" and warmup == 0:
        # the original's CosineAnnealingLR(T_max=total), stepped once per step
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total))
    # 1) linear warmup to the peak
    if step < warmup:
        return (step + 1) / warmup
    if args.schedule in ("cosine", "warmup_cosine"):
        # 2) cosine from the peak down to the floor at the last step
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: 2) stable at the peak, 3) decay to the floor over the last decay_frac of the steps
    decay = int(round(args.decay_frac * total))
    if step < total - decay:
        return 1.0
    progress = (step - (total - decay) + 1) / max(1, decay)
    if args.decay_shape == "sqrt":
        progress = math.sqrt(progress)
    return 1.0 - (1.0 - floor) * progress


def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ----------------------------------------------------------------------------- training
def main():
    args = Hyperparameters()
    if os.environ.get(TEST_ENV):           # never set for a Mainrun run: a run of seconds at a tiny size
        print(f"{TEST_ENV} is set (tests only): {os.environ[TEST_ENV]}; this is not a Mainrun run")
        args = replace(args, **json.loads(os.environ[TEST_ENV]))
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    logger = JsonlLog(args.log_file)
    logger.log("hyperparameters_configured", **asdict(args))

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    precision = ("bf16" if native_bf16(device) else "fp32") if args.precision == "auto" else args.precision
    logger.log("device_info", device=device, precision=precision)

    train_titles, val_titles, source = get_titles(args.num_titles, args.seed, args.val_frac)
    tok = train_tokenizer(train_titles + val_titles, args.vocab_size)
    train_text = EOS.join(train_titles) + EOS
    val_text = EOS.join(val_titles) + EOS
    train_ids = torch.tensor(tok.encode(train_text).ids, dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text).ids, dtype=torch.long)

    batches = len(train_ids) // (args.block_size * args.batch_size)
    max_steps = args.epochs * batches
    eval_interval = max(1, batches // args.evals_per_epoch)
    logger.log("dataset_info", titles_count=len(train_titles), epochs=args.epochs, batches_per_epoch=batches,
               tokens_per_epoch=len(train_ids), vocab_size=tok.get_vocab_size(), source=source)

    cfg = replace(args, vocab_size=tok.get_vocab_size())
    # the members of an ensemble are built one after another from the one seed: each starts from its own weights
    net = (GPT(cfg) if args.ensemble == 1 else Ensemble([GPT(cfg) for _ in range(args.ensemble)])).to(device)
    logger.log("model_info", parameters_count=sum(p.numel() for p in net.parameters() if p.requires_grad))
    opts = build_optimizers(args, net, device)
    ema = None
    if args.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema))
    model = ema.module if ema is not None else net    # the weights evaluate() scores
    forward = torch.compile(net) if args.compile else net
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    clip_parts = list(net.members) if args.ensemble > 1 else [net]

    def evaluate():
        """The official metric: the summed token cross-entropy over the disjoint batch_size x block_size spans
        of the validation ids, divided by the number of characters of the validation text."""
        model.eval()
        losses = 0.0
        with torch.no_grad():
            for xb, yb in iter_full_split(val_ids, args.block_size, args.batch_size, device):
                logits, _ = model(xb)
                losses += F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").item()
        model.train()
        return losses / len(val_text)

    ptr, step, t0 = 0, 0, time.time()
    for epoch in range(1, args.epochs + 1):
        for _ in tqdm(range(1, batches + 1), desc=f"Epoch {epoch}/{args.epochs}"):
            mult = lr_multiplier(args, step, max_steps)
            for group in (group for opt in opts for group in opt.param_groups):
                group["lr"] = group["peak_lr"] * mult
            step += 1
            xb, yb, ptr = get_batch(train_ids, ptr, args.block_size, args.batch_size, device)
            with autocast():
                _, loss = forward(xb, yb)
            # an ensemble's loss is its members' mean: x k gives each member the gradient of its own loss
            (loss * args.ensemble if args.ensemble > 1 else loss).backward()
            if args.grad_clip > 0:
                for part in clip_parts:         # an ensemble's members are clipped one by one, as if alone
                    torch.nn.utils.clip_grad_norm_(part.parameters(), args.grad_clip)
            for opt in opts:                    # disjoint parameters: each steps and clears its own
                opt.step()
                opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(net)

            elapsed = time.time() - t0
            logger.log("training_step", step=step, max_steps=max_steps, loss=loss.item(), elapsed_time=elapsed,
                       lr=opts[-1].param_groups[0]["lr"], prnt=False)
            if step == 1 or step % eval_interval == 0 or step == max_steps:
                val_loss = evaluate()
                logger.log("validation_step", step=step, max_steps=max_steps, loss=val_loss, elapsed_time=elapsed)
    logger.file.close()


if __name__ == "__main__":
    main()
