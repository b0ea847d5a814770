"""Data: the original's split, clear errors for bad sources, tokenizer and ids cached."""
import json

import pandas as pd
import pytest

import mainrun.data as data
from mainrun.config import make_config
from mainrun.data import DataError, get_batch, load_titles, prepare


def test_split_follows_the_original(titles_file):
    train, val, source = load_titles(str(titles_file), 1000, 1337, 0.1)
    assert len(train) == 900 and len(val) == 100 and source["kind"] == "file" and len(source["sha256"]) == 64
    again = load_titles(str(titles_file), 1000, 1337, 0.1)
    assert again[0] == train and again[1] == val                       # deterministic
    assert load_titles(str(titles_file), 1000, 7, 0.1)[0] != train    # the seed shuffles


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_other_formats_same_titles(titles_file, tmp_path, fmt):
    df = pd.read_parquet(titles_file)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    assert load_titles(str(path), 500, 1337, 0.1)[1] == load_titles(str(titles_file), 500, 1337, 0.1)[1]


def test_missing_file_names_both_ways(tmp_path):
    with pytest.raises(DataError) as e:
        load_titles(str(tmp_path / "nope.parquet"), 10, 1, 0.1)
    assert "nope.parquet" in str(e.value) and "MAINRUN_DATA" in str(e.value) and "data=" in str(e.value)


def test_hub_unreachable_names_both_ways(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_titles("hub", 10, 1, 0.1)
    msg = str(e.value)
    assert "julien040/hacker-news-posts" in msg and "MAINRUN_DATA" in msg and "data=PATH" in msg


def test_bad_suffix_missing_column_unreadable_too_few(tmp_path, titles_file):
    bad = tmp_path / "titles.txt"
    bad.write_text("hello")
    with pytest.raises(DataError, match=r"suffix '.txt'.*accepted"):
        load_titles(str(bad), 10, 1, 0.1)
    nocol = tmp_path / "nocol.parquet"
    pd.DataFrame({"headline": ["a", "b"]}).to_parquet(nocol)
    with pytest.raises(DataError, match="no 'title' column.*headline"):
        load_titles(str(nocol), 1, 1, 0.1)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="could not read"):
        load_titles(str(garbage), 1, 1, 0.1)
    with pytest.raises(DataError, match="3,000 titles but num_titles=5,000"):
        load_titles(str(titles_file), 5000, 1, 0.1)


def test_tokenizer_and_ids_are_cached(titles_file, monkeypatch):
    cfg = make_config("smoke", data=str(titles_file), num_titles=2000)
    first = prepare(cfg)
    assert first.vocab_size <= 512 and first.train_ids.dtype.is_floating_point is False

    def boom(*a, **k):
        raise AssertionError("re-tokenized")
    monkeypatch.setattr(data, "train_tokenizer", boom)
    from tokenizers import Tokenizer
    monkeypatch.setattr(Tokenizer, "encode", boom, raising=False)
    second = prepare(cfg)                                   # served from the cache
    assert second.fingerprint == first.fingerprint and (second.train_ids == first.train_ids).all()
    assert second.val_chars == len("<eos>".join(load_titles(str(titles_file), 2000, 1337, 0.1)[1]) + "<eos>")


def test_tokenizer_round_trip(titles_file):
    from tokenizers import Tokenizer
    c = prepare(make_config("smoke", data=str(titles_file), num_titles=2000))
    tok = Tokenizer.from_file(c.tokenizer_path)
    a, b = load_titles(str(titles_file), 2000, 1337, 0.1)[1][:2]
    ids = tok.encode(a + "<eos>" + b + "<eos>").ids
    assert ids.count(c.eos_id) == 2 and tok.token_to_id("<pad>") == 0 and c.eos_id == 1
    assert tok.decode(tok.encode(a).ids).strip() == a      # byte-level: every trained character comes back


def test_get_batch_wraps_like_the_original():
    import torch
    ids = torch.arange(100)
    x, y, ptr = get_batch(ids, 0, 4, 2)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and y[0].tolist() == [1, 2, 3, 4] and ptr == 8
    x, _, ptr = get_batch(ids, 91, 4, 2)                   # 91 + 9 >= 100: back to the start
    assert x[0, 0].item() == 0 and ptr == 8


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_split_is_the_datasets_shuffle(titles_file, tmp_path, monkeypatch, fmt):
    """Files are read with pandas (the lent GPU machines have no HF datasets); the split must be the one
    `datasets` draws (shuffle(seed), first num_titles), and a `datasets.Dataset` (the hub) splits the same."""
    import builtins

    import datasets
    import numpy as np

    df = pd.read_parquet(titles_file)
    path = tmp_path / f"t.{fmt}"
    {"parquet": lambda: df.to_parquet(path), "csv": lambda: df.to_csv(path, index=False),
     "jsonl": lambda: path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))}[fmt]()
    ds = datasets.load_dataset(fmt.replace("jsonl", "json"), data_files=str(path), split="train",
                               cache_dir=str(tmp_path / "hf"))
    expected = [(t or "").strip() for t in ds.shuffle(seed=1337).select(range(1000))["title"]]
    train, val, _ = load_titles(str(path), 1000, 1337, 0.1)
    assert train + val == expected and len(val) == 100
    assert data._titles(ds, np.random.default_rng(1337).permutation(len(ds))[:1000]) == expected
    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("no datasets here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert load_titles(str(path), 1000, 7, 0.1)[0] != train         # files need no datasets
    with pytest.raises(DataError, match="needs the `datasets` package"):
        load_titles("hub", 10, 1337, 0.1)


def test_unigram_tokenizer_is_lossless_and_cached_apart(titles_file):
    """The Unigram tokenizer covers every byte (no <unk>, text comes back exactly, accents and emoji
    included), and its ids are cached under their own fingerprint, not the BPE ones."""
    from tokenizers import Tokenizer
    bpe = prepare(make_config("smoke", data=str(titles_file), num_titles=2000))
    uni = prepare(make_config("smoke", data=str(titles_file), num_titles=2000, tokenizer="unigram"))
    assert uni.fingerprint != bpe.fingerprint and uni.tokenizer_path != bpe.tokenizer_path
    assert uni.val_chars == bpe.val_chars and uni.eos_id == bpe.eos_id == 1
    tok = Tokenizer.from_file(uni.tokenizer_path)
    assert tok.get_vocab_size() <= 512 and (uni.val_ids != tok.token_to_id("<unk>")).all()
    for text in ("Show HN: a café in Zürich – naïve ✓ 🚀", "Ask HN: 日本語のタイトル?"):
        ids = tok.encode(text).ids
        assert tok.token_to_id("<unk>") not in ids and tok.decode(ids).strip() == text
