"""One typed config for every run, plus the profiles and presets that fill it.

A config is built the same way from CLI flags, papermill parameters or a dict:
start from a profile (the scale of the study), apply a preset (a named recipe),
then apply explicit overrides. Unknown names and bad values are refused with a
message that lists what is accepted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Callable

from .presets import PRESETS

HUB_DATASET = "julien040/hacker-news-posts"
# sha256 of ../shared/data/hn-stories-2016-2020.parquet, the offline stand-in for the hub dataset
STANDIN_SHA256 = "09c48d4b417e4d989149bb1117f2f2ab5079057218811ed0056975b65e5ccc20"
# The official evaluation shape (Mainrun's batch x block); never changes with the training shape.
EVAL_BATCH, EVAL_BLOCK = 64, 128
# The project's own budget (the Mainrun rules fix the epochs, not the time): a candidate's 7 epochs in 60 minutes
# on a 2-core CPU, so that a candidate and its extra seeds train within a working session on these machines.
CPU_BUDGET_S = 3600
PUBLISHED_BASELINE = 1.7533   # Mainrun's published baseline loss, on the hub dataset
# Code versions: each change that alters the numbers some configs produce, and which configs it touches. A run
# hashes the latest version that touches its config (code_version), so a change leaves the hash and the
# read-back of every run it does not touch as they were; a config can pin an earlier version (field
# code_version) to read back, or retrain bit for bit, the runs made before the change.
CODE_CHANGES: dict[int, tuple[str, Callable[["Config"], bool]]] = {
    2: ("an ensemble member's output head trains at head_lr (else lr), as a single model's does; version 1 "
        "gave it embed_lr, because the head's name was looked for without the member prefix",
        lambda c: c.ensemble > 1 and (c.embed_lr >= 0 or c.head_lr >= 0)),
}
CODE_VERSION = max(CODE_CHANGES)


@dataclass
class Config:
    # --- identity (not part of the run hash) ---
    name: str = ""                      # human label for the run folder; defaults to profile-preset
    profile: str = "full"               # smoke | quick | full: the scale of the study
    preset: str = "baseline"            # named recipe applied on top of the profile
    # --- data (fixed by the Mainrun rules under the full profile) ---
    data: str = ""                      # titles file (parquet/jsonl/csv) or "hub"; "" = $MAINRUN_DATA, else hub
    num_titles: int = 100_000           # titles taken after the seeded shuffle
    val_frac: float = 0.10              # last fraction of those titles is validation
    seed: int = 1337                    # shuffle seed of the split, and the RNG seed unless train_seed is set
    train_seed: int = -1                # RNG seed of init, dropout (-1 = seed); varies runs on one split
    epochs: int = 7                     # passes over the training tokens
    # --- tokenizer ---
    vocab_size: int = 16_000            # byte-level BPE vocabulary (trained on train+val titles, as the original)
    tokenizer: str = "bpe"              # bpe (the original's) | unigram (Unigram LM); both byte-level, lossless
    # --- model ---
    n_layer: int = 6
    n_head: int = 8
    d_model: int = 512
    block_size: int = 128               # training context; must be >= 128 (the official eval block)
    dropout: float = 0.1
    dropout_rng: str = "torch"          # torch (bernoulli masks) | hash (masks hashed from the element index and a
                                        # drawn seed: the same dropout, 1.28x on a compiled bf16 final4 CPU step)
    attn_dropout: float = -1.0          # on attention probabilities; -1 = dropout; 0 lets SDPA use a fused kernel
    rdrop: float = 0.0                  # R-Drop: two dropout passes, mean CE + rdrop x symmetric KL per token
                                        # (= the paper's alpha / 2); 0 disables; needs dropout > 0
    norm: str = "layernorm"             # layernorm | rmsnorm
    pos: str = "learned"                # learned | rope
    init: str = "normal"                # normal (N(0, 0.02)) | scaled_residual (GPT-2) | kaiming (He)
    mlp: str = "gelu"                   # gelu (4d hidden) | swiglu (8d/3 hidden, rounded to 64) | relu2
    mlp_mult: int = 4                   # hidden width of the gelu and relu2 MLPs, in multiples of d_model
    emb_dropout: float = -1.0           # dropout on the embedding output; -1 = dropout (the original)
    zero_proj: bool = False             # attn proj and MLP out start at zero: every block starts as the identity
    logit_softcap: float = 0.0          # logits -> c * tanh(logits / c), in training and evaluation; 0 = off
    drop_path: float = 0.0              # stochastic depth per sequence: rate from 0 (first block) to this (last)
    unet: bool = False                  # U-net skips (modded-nanogpt): the first half's outputs, times learned
                                        # scalars (init 1), are added before the last half's blocks in reverse
    ensemble: int = 1                   # k models trained side by side on the same batches, each on its own CE;
                                        # the prediction is the mean of their probabilities. 1 = one model
    value_embed: bool = False           # value embeddings (modded-nanogpt): a second token embedding added to
                                        # every layer's attention values, times a learned scalar (init 0.5)
    tie_embeddings: bool = True         # share token embedding and output head
    qk_norm: bool = False               # RMS-normalise queries and keys per head
    attn_mask: str = "causal"           # causal | title (causal and each title attends only to itself)
    # --- optimisation ---
    optimizer: str = "sgd"              # sgd | adamw | muon (Muon on hidden matrices, AdamW elsewhere)
    lr: float = 6e-3                    # peak learning rate (AdamW part for muon)
    muon_lr: float = 0.02               # Muon's learning rate for hidden matrices
    muon_ns: str = "bf16"               # Muon's Newton-Schulz dtype: bf16 (torch's) | fp32 (CPUs without bf16)
    momentum: float = 0.0               # SGD momentum
    muon_momentum: float = 0.95         # Muon's momentum
    muon_nesterov: bool = True          # Nesterov momentum in Muon (torch's default)
    muon_ns_steps: int = 5              # Newton-Schulz iterations per Muon step (torch's default)
    embed_lr: float = -1.0              # AdamW peak LR of the embeddings (token, position, value); -1 = lr
    head_lr: float = -1.0               # AdamW peak LR of an untied output head; -1 = lr
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0              # max global grad norm; 0 disables
    batch_size: int = 64                # sequences per micro-batch
    grad_accum: int = 1                 # micro-batches per optimizer step
    lr_scaling: str = "none"            # none | linear (lr *= batch_size * grad_accum / 64)
    schedule: str = "cosine"            # cosine | warmup_cosine | wsd | constant
    warmup_frac: float = 0.0            # fraction of optimizer steps spent warming up linearly
    min_lr_frac: float = 0.0            # floor of the decay, as a fraction of peak
    decay_frac: float = 0.2             # wsd: fraction of steps in the final decay
    decay_shape: str = "linear"         # wsd decay: linear | sqrt (Hagele et al. 2024's "1-sqrt" cooldown)
    z_loss: float = 0.0                 # PaLM's z-loss: objective + z_loss x mean(logsumexp^2); logs stay plain CE
    ema: float = 0.0                    # EMA decay of weights used for evaluation; 0 disables
    eval_precision: str = "fp32"        # fp32 (the original's arithmetic) | bf16 (faster, not for headlines)
    # --- execution ---
    precision: str = "auto"             # auto | fp32 | bf16 (autocast); auto = bf16 where matmuls have native
                                        # bf16, else fp32; studies pin it; runs record and hash the resolved value
    device: str = "auto"                # auto | cpu | cuda; auto = cuda if torch sees one. Resolved like
                                        # precision, and part of the hash (see UNHASHED_EXECUTION)
    compile: bool = False               # torch.compile the model
    evals_per_epoch: int = 3            # validation passes per epoch (plus step 1 and the last step)
    checkpoint_every: int = 25          # optimizer steps between checkpoints; 0 = only at the end
    code_version: int = 0               # 0 = this code's; an earlier one (CODE_CHANGES) reads back or retrains
                                        # the runs made before a change; hashed as code_version(cfg)

    # ------------------------------------------------------------------
    def hash_fields(self) -> dict[str, Any]:
        """The fields that change a run's result; ones added later are left out while neutral (old hashes stay)."""
        d = dataclasses.asdict(self)
        if d["device"] == "auto" or d["precision"] == "auto":
            raise ValueError("a run hash needs the resolved device and precision (host.resolve_execution), "
                             f"not device={d['device']!r} precision={d['precision']!r}")
        d = {k: v for k, v in d.items()
             if k not in NOT_HASHED and not (k in HASH_OMIT_IF and HASH_OMIT_IF[k] == v)}
        if (d["device"], d["precision"]) in UNHASHED_EXECUTION:
            d.pop("device")
        return d

    @property
    def rng_seed(self) -> int:
        return self.seed if self.train_seed < 0 else self.train_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.profile}-{self.preset}"


NOT_HASHED = ("name", "profile", "preset", "data", "checkpoint_every", "code_version")
# A bf16 run on a CPU and one on a GPU are different runs, so the device is hashed, except for the two pairs
# `auto` gave on the project's machines before device entered the hash (their hashes stay valid).
UNHASHED_EXECUTION = {("cpu", "fp32"), ("cuda", "bf16")}
HASH_OMIT_IF = {"train_seed": -1, "eval_precision": "fp32", "muon_ns": "bf16", "tokenizer": "bpe", "rdrop": 0.0,
                "attn_dropout": -1.0, "emb_dropout": -1.0, "zero_proj": False, "logit_softcap": 0.0,
                "muon_momentum": 0.95, "embed_lr": -1.0, "head_lr": -1.0, "drop_path": 0.0, "unet": False,
                "value_embed": False, "muon_nesterov": True, "muon_ns_steps": 5, "decay_shape": "linear",
                "z_loss": 0.0, "mlp_mult": 4, "ensemble": 1, "dropout_rng": "torch"}

CHOICES: dict[str, tuple[str, ...]] = {
    "profile": ("smoke", "quick", "full"),
    "tokenizer": ("bpe", "unigram"),
    "norm": ("layernorm", "rmsnorm"),
    "pos": ("learned", "rope"),
    "init": ("normal", "scaled_residual", "kaiming"),
    "mlp": ("gelu", "swiglu", "relu2"),
    "attn_mask": ("causal", "title"),
    "optimizer": ("sgd", "adamw", "muon"),
    "muon_ns": ("bf16", "fp32"),
    "dropout_rng": ("torch", "hash"),
    "lr_scaling": ("none", "linear"),
    "schedule": ("cosine", "warmup_cosine", "wsd", "constant"),
    "decay_shape": ("linear", "sqrt"),
    "precision": ("auto", "fp32", "bf16"),
    "eval_precision": ("fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
}

# Profiles: the scale of a study. full = the Mainrun rules; quick = a CPU proxy; smoke = seconds.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    # quick and smoke are CPU profiles: fp32 on the CPU whatever the host, so their runs are the same
    # computation (and hash) on an AVX2 laptop, a CPU with native bf16 and a GPU machine
    "quick": dict(num_titles=10_000, vocab_size=1024, n_layer=2, n_head=2, d_model=64,
                  evals_per_epoch=1, checkpoint_every=0, device="cpu", precision="fp32"),
    "smoke": dict(num_titles=6_000, vocab_size=512, n_layer=1, n_head=2, d_model=32,
                  epochs=1, batch_size=16, evals_per_epoch=1, checkpoint_every=0, device="cpu", precision="fp32"),
}


class ConfigError(ValueError):
    """A config value or name that is not accepted."""


def _choose(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not accepted; choose one of: {', '.join(choices)}")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _coerce(name: str, value: Any, typ: type) -> Any:
    """Turn strings (from the CLI) into the field's type; refuse mismatches clearly."""
    if typ is bool:
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        if isinstance(value, int) and value in (0, 1):        # a bool is an int
            return bool(value)
        raise ConfigError(f"{name}={value!r} is not a boolean; accepted: true or false")
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} is not a string")
        return value
    if isinstance(value, str):
        try:
            return typ(value.replace("_", "") if typ is int else value)
        except ValueError:
            pass
    elif not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and
                                          (typ is float or value.is_integer()))):
        return typ(value)
    raise ConfigError(f"{name}={value!r} is not {'an integer' if typ is int else 'a number'}")


_TYPES = {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(Config)}


# One-field rules: (fields, accepted(value), what is accepted), refused as "<name>=<value> must ...".
RANGES: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (("num_titles", "epochs", "vocab_size", "n_layer", "n_head", "d_model", "block_size", "batch_size",
      "grad_accum", "evals_per_epoch", "muon_ns_steps", "mlp_mult", "ensemble"),
     lambda v: v >= 1, "must be a positive integer"),
    (("checkpoint_every",), lambda v: v >= 0, "must be >= 0 (0 = only at the end)"),
    (("vocab_size",), lambda v: v >= 260, "must be >= 260 (256 bytes plus special tokens)"),
    (("val_frac",), lambda v: 0.0 < v < 1.0, "must be strictly between 0 and 1"),
    (("attn_dropout", "emb_dropout"), lambda v: v == -1.0 or 0.0 <= v < 1.0,
     "must be -1 (the same as dropout) or in [0, 1)"),
    (("embed_lr", "head_lr"), lambda v: v == -1.0 or (math.isfinite(v) and v > 0),
     "must be -1 (the same as lr) or a positive finite number"),
    (("logit_softcap",), lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0 (0 = off)"),
    (("muon_momentum", "dropout", "drop_path", "warmup_frac", "ema", "beta1", "beta2"), lambda v: 0.0 <= v < 1.0,
     "must be in [0, 1)"),
    (("min_lr_frac", "decay_frac"), lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    (("lr", "muon_lr"), lambda v: math.isfinite(v) and v > 0, "must be a positive finite number"),
    (("weight_decay", "momentum", "grad_clip", "rdrop", "z_loss"), lambda v: math.isfinite(v) and v >= 0,
     "must be a finite number >= 0"),
)


def validate(cfg: Config) -> Config:
    """Refuse values outside what the code supports, naming the value and what is accepted."""
    for name, choices in {**CHOICES, "preset": PRESETS}.items():
        _choose(name, getattr(cfg, name), choices)
    for names, ok, accepted in RANGES:
        for name in names:
            if not ok(getattr(cfg, name)):
                raise ConfigError(f"{name}={getattr(cfg, name)} {accepted}")
    if not 0 <= cfg.code_version <= CODE_VERSION:
        raise ConfigError(f"code_version={cfg.code_version} is not accepted; use 0 (this code's) or a version "
                          f"from 1 to {CODE_VERSION}")
    if cfg.d_model % cfg.n_head:
        raise ConfigError(f"d_model={cfg.d_model} must be divisible by n_head={cfg.n_head}")
    if cfg.pos == "rope" and (cfg.d_model // cfg.n_head) % 2:
        raise ConfigError(f"pos='rope' needs an even head size; d_model/n_head = {cfg.d_model // cfg.n_head}")
    if cfg.block_size < EVAL_BLOCK:
        raise ConfigError(f"block_size={cfg.block_size} must be >= {EVAL_BLOCK}: "
                          f"the official evaluation always runs at {EVAL_BATCH} x {EVAL_BLOCK}")
    if cfg.rdrop > 0 and cfg.dropout == 0:
        raise ConfigError(f"rdrop={cfg.rdrop} needs dropout > 0 (without dropout both passes agree and the KL "
                          f"term is zero); set dropout or rdrop=0")
    if cfg.ensemble > 1 and (cfg.z_loss > 0 or cfg.rdrop > 0):
        raise ConfigError(f"ensemble={cfg.ensemble} trains each member on its own cross-entropy only; it does not "
                          f"combine with z_loss={cfg.z_loss} or rdrop={cfg.rdrop} (set both to 0, or ensemble=1)")
    if cfg.decay_shape != "linear" and cfg.schedule != "wsd":
        raise ConfigError(f"decay_shape={cfg.decay_shape!r} shapes the wsd decay; schedule={cfg.schedule!r} has "
                          f"none (use schedule=wsd, or decay_shape=linear)")
    if cfg.schedule == "wsd" and cfg.warmup_frac + cfg.decay_frac > 1.0:
        raise ConfigError(f"warmup_frac + decay_frac = {cfg.warmup_frac + cfg.decay_frac} must be <= 1 for wsd")
    return cfg


def from_dict(values: dict[str, Any]) -> Config:
    """A config from field values (one saved by to_dict, or make_config's): unknown names refused, each value
    coerced to its field's type, then validated (no profile/preset defaults re-applied)."""
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"unknown config name(s): {', '.join(unknown)}; accepted: {', '.join(_TYPES)}")
    return validate(Config(**{k: _coerce(k, v, _TYPES[k]) for k, v in values.items()}))


def recorded_config(values: dict[str, Any]) -> Config:
    """The config a run recorded (its config.json, a checkpoint's): one written before code versions existed
    carries none, and ran under version 1."""
    return from_dict({"code_version": 1, **values})


def make_config(profile: str = "full", preset: str = "baseline", **overrides: Any) -> Config:
    """Profile defaults, then the preset, then explicit overrides, then validation."""
    _choose("profile", profile, PROFILES)
    _choose("preset", preset, PRESETS)
    return from_dict({"profile": profile, "preset": preset, **PROFILES[profile], **PRESETS[preset], **overrides})


def resolve_train(profile: str, train: bool | None) -> bool:
    """A notebook's `train` parameter: None trains what is missing under quick and smoke and only reads the
    ledger under full (hours per run on 2 CPU cores); True or False decides it."""
    _choose("profile", profile, PROFILES)
    if train is None:
        return profile != "full"
    if not isinstance(train, bool):
        raise ConfigError(f"train={train!r} is not accepted; use True, False or None (None: train under "
                          f"quick and smoke, only read the ledger under full)")
    return train


def cli_command(cfg: Config) -> str:
    """The `python -m mainrun train` command for exactly this config: profile, preset, then what differs."""
    ref = make_config(cfg.profile, cfg.preset).to_dict()
    sets = [f"{k}={v}" for k, v in cfg.to_dict().items() if k not in ("profile", "preset") and ref[k] != v]
    return (f"python -m mainrun train --profile {cfg.profile} --preset {cfg.preset}"
            + (f" --set {' '.join(sets)}" if sets else ""))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['lr=3e-4', 'optimizer=adamw'] -> dict; refuses items without '='."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not NAME=VALUE; accepted names: {', '.join(_TYPES)}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def latest_code_version(cfg: Config) -> int:
    """The version this code runs a config under: the latest change that touches it (1 if none)."""
    return max((v for v, (_, touches) in CODE_CHANGES.items() if touches(cfg)), default=1)


def code_version(cfg: Config) -> int:
    """The code version a config runs under: latest_code_version, or the earlier one it pins."""
    latest = latest_code_version(cfg)
    return latest if cfg.code_version == 0 else min(cfg.code_version, latest)


def run_hash(cfg: Config, data_fingerprint: str) -> str:
    """Short stable hash of everything that changes a run's result."""
    payload = {"config": cfg.hash_fields(), "data": data_fingerprint, "code_version": code_version(cfg),
               "eval_shape": [EVAL_BATCH, EVAL_BLOCK]}
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def rules_check(cfg: Config, data_source: dict[str, Any]) -> tuple[bool, list[str]]:
    """Is this run official under the Mainrun rules? Returns (official, reasons it is not)."""
    reasons = []
    fixed = dict(epochs=7, seed=1337, val_frac=0.10, num_titles=100_000)
    for k, v in fixed.items():
        if getattr(cfg, k) != v:
            reasons.append(f"{k}={getattr(cfg, k)} (rules fix {v})")
    if cfg.train_seed >= 0 and cfg.train_seed != 1337:
        reasons.append(f"train_seed={cfg.train_seed} (an extra seed; the official run uses 1337)")
    if data_source.get("kind") == "hub":
        if data_source.get("dataset") != HUB_DATASET:
            reasons.append(f"dataset {data_source.get('dataset')} is not {HUB_DATASET}")
    elif data_source.get("sha256") != STANDIN_SHA256:
        reasons.append("data file is neither the hub dataset nor the designated offline stand-in")
    return (not reasons), reasons
