"""The held-out test sets: disjoint from the Mainrun split by id and by exact title, fixed by their seed."""
import pandas as pd
import pytest

from conftest import STANDIN, have_standin
from mainrun import testset
from mainrun.data import load_titles, titles_sha256

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline corpus (../shared/data)")


def test_test_sets_are_disjoint_from_the_split_and_fixed():
    train, val, _ = load_titles(str(STANDIN), 100_000, 1337, 0.1)       # the split, through the training path
    split_titles = set(train) | set(val)
    paths = {k: testset.test_file(k, str(STANDIN)) for k in testset.KINDS}
    sets = {k: pd.read_parquet(p) for k, (p, _) in paths.items()}
    assert len(sets["random"]) == testset.RANDOM_TITLES and len(sets["late"]) == testset.LATE_TITLES
    frame = pd.read_parquet(STANDIN)
    split_ids = set(frame.set_index(frame["title"].fillna("").str.strip()).loc[list(split_titles), "id"])
    for k, df in sets.items():
        assert not set(df["title"]) & split_titles, k                 # no exact title of the split
        assert not set(df["id"]) & split_ids, k                       # no id of the split
        assert df["title"].is_unique and (df["title"].str.strip() == df["title"]).all() and (df["title"] != "").all()
    assert not set(sets["random"]["id"]) & set(sets["late"]["id"])
    assert sets["late"]["time"].min() >= sets["random"]["time"].max()   # the late slice is the most recent
    again = testset.build(frame)                                        # the same draw every time
    assert again["random"]["id"].tolist() == sets["random"]["id"].tolist()
    assert paths["random"][1]["titles_sha256"] == titles_sha256(again["random"]["title"])
    with pytest.raises(Exception, match="choose one of: random, late"):
        testset.test_file("oops", str(STANDIN))


def test_eval_on_a_test_set_saves_its_result(capsys):
    """`eval RUN --data test:late --save` scores a finished run on the held-out set and writes
    results/test/<run>-test-late.json (beside the run's ledger) with the set's description."""
    import json

    import mainrun
    from mainrun import cli, ledger
    summary = mainrun.run(mainrun.make_config("smoke", name="for-test"), progress=False)
    assert cli.main(["eval", "for-test", "--data", "test:late", "--save"]) == 0
    path = ledger.results_root("smoke") / "test" / f"for-test-{summary['hash']}-test-late.json"
    saved = json.loads(path.read_text())
    assert saved["test"]["test_set"] == "late" and saved["titles"] == testset.LATE_TITLES
    assert saved["official_loss"] > 0 and saved["full_loss"] > 0 and saved["data"] == "test:late"
