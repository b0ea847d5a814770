"""Titles in, token ids out: loading, the seeded split, the BPE tokenizer, caches and batches.

The split follows the original exactly: HF `datasets` shuffle(seed), first `num_titles` rows, strip, first
(1 - val_frac) train, rest validation. Titles are joined with "<eos>" (and one trailing "<eos>"); the
validation text's length in characters is the denominator of the official metric.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import CHOICES, HUB_DATASET, Config
from .ledger import atomic_write_bytes, repo_root

EOS = "<eos>"
SPECIALS = ["<pad>", EOS, "<unk>"]  # the original's order: ids 0, 1, 2


class DataError(RuntimeError):
    """The titles could not be obtained or are not usable."""


def cache_dir() -> Path:
    """Tokenizers, encoded ids and HF caches (git-ignored)."""
    d = Path(os.environ.get("MAINRUN_CACHE", repo_root() / "data" / "cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def resolve_source(data: str) -> str:
    """"" -> $MAINRUN_DATA or the hub; otherwise the given path or "hub"."""
    return data or os.environ.get("MAINRUN_DATA", "") or "hub"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_dataset(source: str):
    """(table, record): the hub dataset as a `datasets.Dataset`, or a local file as a pandas frame."""
    if source == "hub":
        try:
            from datasets import load_dataset
        except ImportError:
            raise DataError("the hub dataset needs the `datasets` package, which is not installed here; pip "
                            "install -r requirements.txt, or set MAINRUN_DATA=/path/to/titles.parquet") from None
        try:
            return (load_dataset(HUB_DATASET, split="train", cache_dir=str(cache_dir() / "hf")),
                    {"kind": "hub", "dataset": HUB_DATASET})
        except Exception as e:  # offline, hub down, auth...
            raise DataError(
                f"could not load the hub dataset {HUB_DATASET} ({type(e).__name__}: {str(e)[:200]}). "
                "Supply the titles offline instead: set MAINRUN_DATA=/path/to/titles.parquet "
                "(or .jsonl/.csv with a 'title' column), or pass data=PATH "
                "(CLI: --set data=PATH). On these machines: ../shared/data/hn-stories-2016-2020.parquet"
            ) from None
    import pandas as pd

    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist. Supply titles with MAINRUN_DATA=PATH or "
                        f"data=PATH (a .parquet, .jsonl or .csv file with a 'title' column), or data='hub'")
    readers = {".parquet": pd.read_parquet, ".jsonl": functools.partial(pd.read_json, lines=True),
               ".json": pd.read_json, ".csv": pd.read_csv}
    if path.suffix.lower() not in readers:
        raise DataError(f"data file {str(path)!r} has suffix {path.suffix!r}; accepted: {', '.join(readers)}")
    try:
        return readers[path.suffix.lower()](path), file_record(path)
    except Exception as e:
        raise DataError(f"could not read {str(path)!r} as {path.suffix.lower()[1:]}: {type(e).__name__}: "
                        f"{str(e)[:200]}") from None


def _titles(table, rows, where: str = "the data") -> list[str]:
    """The stripped titles of `rows` (a range, or the split's permutation) of a table from _load_dataset; a
    title that is not text (nor missing) is refused, naming its row."""
    columns = list(table.column_names if hasattr(table, "column_names") else table.columns)
    if "title" not in columns:
        raise DataError(f"the data has no 'title' column (columns: {', '.join(columns)})")
    if hasattr(table, "column_names"):    # a datasets.Dataset: one Arrow query for the rows
        titles = table.select(rows)["title"]
    else:                                 # a frame: a missing title is NaN in a csv, None in parquet
        titles = table["title"].iloc[rows].fillna("").tolist()
    for row, t in zip(rows, titles):
        if t is not None and not isinstance(t, str):
            raise DataError(f"{where}: the 'title' column holds a {type(t).__name__} at row {row}: {t!r}; titles "
                            f"are text (a string, or missing for a blank title)")
    return [(t or "").strip() for t in titles]


def file_record(path: Path) -> dict:
    """How a run names its data file: file name and sha256, plus the path relative to the checkout when the
    file lies inside it. Never an absolute path: records must read the same on every machine."""
    path = Path(path).resolve()
    rec = {"kind": "file", "name": path.name, "sha256": file_sha256(path)}
    if path.is_relative_to(repo_root().resolve()):
        rec["path"] = str(path.relative_to(repo_root().resolve()))
    return rec


def load_titles(data: str, num_titles: int, seed: int, val_frac: float) -> tuple[list[str], list[str], dict]:
    """The original's split: HF datasets' shuffle(seed) (numpy default_rng(seed).permutation), first
    num_titles, strip, train/val. Kept in memory per file version (a notebook resolves dozens of configs)."""
    source, version = resolve_source(data), None
    path = Path(source).expanduser()
    if source != "hub" and path.is_file():
        source, version = str(path.resolve()), (path.stat().st_size, path.stat().st_mtime_ns)
    train, val, rec = _split(source, version, num_titles, seed, val_frac)
    return list(train), list(val), dict(rec)


@functools.lru_cache(maxsize=8)
def _split(source: str, version: tuple | None, num_titles: int, seed: int, val_frac: float):
    """load_titles for one version (size, mtime) of a file, or the hub (version None)."""
    table, record = _load_dataset(source)
    if len(table) < num_titles:
        raise DataError(f"the data has {len(table):,} titles but num_titles={num_titles:,} were asked for")
    titles = _titles(table, np.random.default_rng(seed).permutation(len(table))[:num_titles], source)
    n = int(num_titles * (1 - val_frac))
    return titles[:n], titles[n:], record


def read_titles(data: str, limit: int = 0) -> list[str]:
    """All titles of a source in file order (the first `limit` if > 0), stripped; for held-out tests."""
    table, _ = _load_dataset(source := resolve_source(data))
    if limit and len(table) < limit:
        raise DataError(f"the data has {len(table):,} titles but {limit:,} were asked for")
    return _titles(table, range(limit or len(table)), source)


@dataclass
class Corpus:
    """Everything a run needs from the data, plus where it came from."""
    train_ids: torch.Tensor   # int64 [N_train]
    val_ids: torch.Tensor     # int64 [N_val]
    val_chars: int            # len(val_text): the official metric's denominator
    vocab_size: int           # the trained tokenizer's actual size
    eos_id: int
    fingerprint: str          # sha256 of the selected titles and tokenizer settings
    source: dict              # kind/path/sha256 or hub dataset name
    tokenizer_path: str
    n_train_titles: int


def train_tokenizer(titles: list[str], vocab_size: int, kind: str = "bpe"):
    """A byte-level tokenizer (specials <pad>, <eos>, <unk>): "bpe" trains BPE as the original does;
    "unigram" trains a Unigram LM over the same byte-level pieces, seeded with all 256 byte symbols so
    that no input is ever unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=False)
    else:
        raise ValueError(f"tokenizer={kind!r} is not accepted; choose one of: {', '.join(CHOICES['tokenizer'])}")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(titles, trainer)
    return tok


def join_titles(titles: list[str]) -> str:
    return EOS.join(titles) + EOS


def titles_sha256(titles: list[str], header: str = "") -> str:
    """sha256 of a header and the titles, one per line (of the text: a parquet file's bytes vary by writer)."""
    h = hashlib.sha256(header.encode())
    for t in titles:
        h.update(t.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def _split_and_fingerprint(cfg: Config) -> tuple[list[str], list[str], dict, str]:
    train_titles, val_titles, source = load_titles(cfg.data, cfg.num_titles, cfg.seed, cfg.val_frac)
    settings = {"tokenizer": f"bytelevel-{cfg.tokenizer}", "vocab_size": cfg.vocab_size,
                "n_train": len(train_titles)}
    return train_titles, val_titles, source, titles_sha256(train_titles + val_titles, json.dumps(settings))


def fingerprint(cfg: Config) -> tuple[str, dict]:
    """(fingerprint, source) of the corpus a config trains on: its split's titles and tokenizer settings,
    hashed. Enough to name a run and find it in the ledger; no tokenizer is trained."""
    *_, source, fp = _split_and_fingerprint(cfg)
    return fp, source


def prepare(cfg: Config) -> Corpus:
    """Load, split, tokenize (cached by data fingerprint and tokenizer settings)."""
    from tokenizers import Tokenizer

    train_titles, val_titles, source, fp = _split_and_fingerprint(cfg)
    d = cache_dir()
    tok_path = d / f"tokenizer-{fp[:16]}.json"
    ids_path = d / f"ids-{fp[:16]}.pt"
    if tok_path.exists():
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = train_tokenizer(train_titles + val_titles, cfg.vocab_size, cfg.tokenizer)
        atomic_write_bytes(tok_path, lambda p: tok.save(p))
    val_text = join_titles(val_titles)
    if ids_path.exists():
        blob = torch.load(ids_path)
        train_ids, val_ids = blob["train_ids"], blob["val_ids"]
    else:
        train_ids = torch.tensor(tok.encode(join_titles(train_titles)).ids, dtype=torch.long)
        val_ids = torch.tensor(tok.encode(val_text).ids, dtype=torch.long)
        unk = tok.token_to_id("<unk>")
        if bool((train_ids == unk).any() or (val_ids == unk).any()):
            # the metric divides by characters: a tokenizer that loses input would score text it never saw
            raise RuntimeError(f"the {cfg.tokenizer} tokenizer mapped input to <unk>; refusing a lossy "
                               f"tokenization")
        atomic_write_bytes(ids_path, lambda p: torch.save({"train_ids": train_ids, "val_ids": val_ids}, p))
    return Corpus(train_ids=train_ids, val_ids=val_ids, val_chars=len(val_text), vocab_size=tok.get_vocab_size(),
                  eos_id=tok.token_to_id(EOS), fingerprint=fp, source=source, tokenizer_path=str(tok_path),
                  n_train_titles=len(train_titles))


def encode_titles(tokenizer_path: str, titles: list[str]) -> tuple[torch.Tensor, int]:
    """Encode held-out titles with a run's tokenizer: (ids, number of characters)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    text = join_titles(titles)
    return torch.tensor(tok.encode(text).ids, dtype=torch.long), len(text)


# ----------------------------------------------------------------------------- batches
def get_batch(ids: torch.Tensor, ptr: int, block: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The original's sequential batch: a span of batch*block+1 tokens from ptr, wrapping to 0."""
    span = block * batch + 1
    if ptr + span >= len(ids):
        ptr = 0
    chunk = ids[ptr: ptr + span]
    x = chunk[:-1].view(batch, block)  # [B, T]
    y = chunk[1:].view(batch, block)   # [B, T] next-token targets
    return x, y, ptr + block * batch

