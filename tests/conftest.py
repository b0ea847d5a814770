"""Shared fixtures: an isolated ledger and checkpoint folder per test, one shared data cache."""
import contextlib
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

# The test models are tiny: one thread is as fast as two, and does not fight a background run.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
# the offline corpus: $MAINRUN_DATA when set (as .ci/run sets it), else ../shared beside the checkout
STANDIN = Path(os.environ.get("MAINRUN_DATA") or ROOT.parent / "shared" / "data" / "hn-stories-2016-2020.parquet")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def isolate(env: pytest.MonkeyPatch, tmp: Path, cache: Path) -> None:
    """Ledger and checkpoints under tmp, the shared data cache, the offline corpus."""
    env.setenv("MAINRUN_CACHE", str(cache))
    env.setenv("MAINRUN_RESULTS", str(tmp / "results"))
    env.setenv("MAINRUN_CHECKPOINTS", str(tmp / "ckpt"))
    if not os.environ.get("MAINRUN_DATA") and STANDIN.exists():
        env.setenv("MAINRUN_DATA", str(STANDIN))


@pytest.fixture(autouse=True)
def isolated(tmp_path, shared_cache, monkeypatch):
    """Each test writes its ledger and checkpoints under its own tmp folder."""
    isolate(monkeypatch, tmp_path, shared_cache)
    return tmp_path


@contextlib.contextmanager
def isolated_module(tmp_path_factory, shared_cache, name: str):
    """`isolated` for a module-scoped fixture (which is set up before any test's own): a ledger of its own
    under a fresh tmp folder, the variables restored on exit. Yields the folder."""
    tmp = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as env:
        isolate(env, tmp, shared_cache)
        yield tmp


@pytest.fixture
def titles_file(tmp_path):
    """A small parquet of varied synthetic titles (for input-handling tests, not for results)."""
    words = ["show", "hn", "rust", "python", "why", "the", "new", "open", "source", "gpu", "startup", "ask",
             "database", "linux", "we", "built", "a", "fast", "tiny", "model", "for", "web", "apple", "google"]
    titles = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 6)).capitalize() + f" {i}"
              for i in range(3000)]
    path = tmp_path / "titles.parquet"
    pd.DataFrame({"title": titles, "id": range(len(titles))}).to_parquet(path)
    return path


def have_standin() -> bool:
    return bool(os.environ.get("MAINRUN_DATA")) or STANDIN.exists()
