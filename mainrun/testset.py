"""Test sets the model search never saw, drawn from the titles the Mainrun split leaves out.

From the titles the split (seed 1337, first 100,000) never selects, minus blank ones and any equal to a title
of the split, each kept once: `late`, the LATE_TITLES most recent in time order (a time-shift reading), and
`random`, RANDOM_TITLES drawn from the rest with TEST_SEED. Built from the data file on demand and cached
(git-ignored): `python -m mainrun eval RUN --data test:random` (or test:late). Every selection in this project
was made on the validation loss, so the gap between the two ratios says how much of a gain is selection.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import DataError, cache_dir, file_sha256, resolve_source, titles_sha256
from .ledger import atomic_write_bytes

TEST_SEED = 2026
RANDOM_TITLES = 10_000
LATE_TITLES = 5_000
SPLIT = dict(seed=1337, num_titles=100_000)   # the Mainrun split the test sets stay out of
KINDS = ("random", "late")


def held_out(frame: pd.DataFrame, seed: int = SPLIT["seed"],
             num_titles: int = SPLIT["num_titles"]) -> pd.DataFrame:
    """Rows the split never selects, minus blank titles and titles equal to one in the split; one row per title.
    The split's permutation is datasets.Dataset.shuffle(seed)'s (numpy default_rng(seed), as data.load_titles)."""
    perm = np.random.default_rng(seed).permutation(len(frame))
    split = frame.iloc[perm[:num_titles]]
    rest = frame.iloc[perm[num_titles:]].copy()
    rest["title"] = rest["title"].fillna("").str.strip()
    seen = set(split["title"].fillna("").str.strip())
    rest = rest[(rest["title"] != "") & ~rest["title"].isin(seen) & ~rest["id"].isin(set(split["id"]))]
    return rest.sort_values("id").drop_duplicates("title", keep="first")


def build(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{'late': ..., 'random': ...}: columns id, title, time."""
    rest = held_out(frame)
    late = rest.sort_values(["time", "id"]).tail(LATE_TITLES)
    pool = rest[~rest["id"].isin(set(late["id"]))]
    if len(pool) < RANDOM_TITLES:
        raise DataError(f"only {len(pool):,} held-out titles remain for a random test set of {RANDOM_TITLES:,}")
    pick = np.random.default_rng(TEST_SEED).choice(len(pool), RANDOM_TITLES, replace=False)
    cols = ["id", "title", "time"]
    return {"late": late[cols].reset_index(drop=True), "random": pool.iloc[pick][cols].reset_index(drop=True)}


def test_file(kind: str, data: str = "") -> tuple[str, dict]:
    """Path of the cached test set `kind` built from the data file (MAINRUN_DATA by default), and its record."""
    if kind not in KINDS:
        raise DataError(f"test set {kind!r} is not accepted; choose one of: {', '.join(KINDS)}")
    source = resolve_source(data)
    if source == "hub":
        raise DataError("test sets are built from a local titles file: set MAINRUN_DATA=/path/to/titles.parquet")
    sha = file_sha256(source)
    path = cache_dir() / f"test-{kind}-{sha[:16]}-s{TEST_SEED}.parquet"
    if not path.exists():
        sets = build(pd.read_parquet(source))
        for k, df in sets.items():
            atomic_write_bytes(cache_dir() / f"test-{k}-{sha[:16]}-s{TEST_SEED}.parquet",
                               lambda tmp, df=df: df.to_parquet(tmp))
    df = pd.read_parquet(path)
    rec = {"test_set": kind, "titles": len(df), "seed": TEST_SEED if kind == "random" else None,
           "from_time": int(df["time"].min()), "to_time": int(df["time"].max()),
           "source_sha256": sha, "titles_sha256": titles_sha256(df["title"])}
    return str(path), rec
