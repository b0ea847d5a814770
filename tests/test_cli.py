"""`python -m mainrun eval RUN` finds a run the way `train` named it: name, folder name, hash, hash prefix."""
import contextlib
import io
import json
import shutil

import pytest

from conftest import have_standin, isolated_module
from mainrun import cli

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_cache):
    """A smoke run trained once through the CLI (in this process) under the name h-final."""
    out = io.StringIO()
    with isolated_module(tmp_path_factory, shared_cache, "trained") as tmp, contextlib.redirect_stdout(out):
        assert cli.main(["train", "--profile", "smoke", "--quiet", "--set", "name=h-final", "epochs=1"]) == 0
    return tmp, json.loads(out.getvalue())["hash"]


@pytest.fixture
def named_run(isolated, trained, monkeypatch):
    """This test's own copy of the ledger holding h-final (the final weights stay where they were written):
    (folder, hash)."""
    tmp, h = trained
    shutil.copytree(tmp / "results", isolated / "results")
    monkeypatch.setenv("MAINRUN_CHECKPOINTS", str(tmp / "ckpt"))
    (folder,) = (isolated / "results" / "runs").glob("*")
    assert folder.name == f"h-final-{h}"
    return folder, h


def test_eval_finds_a_run_by_name_folder_and_hash(named_run, titles_file, capsys):
    folder, h = named_run
    for spec in ("h-final", folder.name, h, h[:6], str(folder)):
        assert cli.main(["eval", spec, "--data", str(titles_file), "--num-titles", "500"]) == 0, spec
        out = json.loads(capsys.readouterr().out)
        assert out["run"] == folder.name and out["titles"] == 500 and out["full_loss"] > 0, spec


def test_eval_names_the_candidates_when_a_name_is_ambiguous(named_run):
    folder, h = named_run
    twin = folder.parent / "h-final-0123456789ab"                # the same name, another config
    shutil.copytree(folder, twin)
    meta = json.loads((twin / "config.json").read_text())
    (twin / "config.json").write_text(json.dumps({**meta, "hash": "0123456789ab"}))
    with pytest.raises(SystemExit) as e:
        cli._find_run_dir("h-final")
    msg = str(e.value)
    assert "2 runs have the name 'h-final'" in msg and folder.name in msg and twin.name in msg
    assert cli._find_run_dir(folder.name) == folder and cli._find_run_dir(h) == folder   # still unique
    assert cli._find_run_dir("0123") == twin


def test_eval_lists_close_matches_when_nothing_matches(named_run, titles_file, capsys):
    folder, _ = named_run
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "h-finl", "--data", str(titles_file)])
    msg = str(e.value)
    assert "no run matches 'h-finl'" in msg and "close matches: h-final" in msg
    assert "python -m mainrun list" in msg
    with pytest.raises(SystemExit, match="no run matches 'zzzz-nothing-like-it'") as e:
        cli._find_run_dir("zzzz-nothing-like-it")
    assert "close matches" not in str(e.value)
    with pytest.raises(SystemExit, match="no run matches 'abc'"):
        cli._find_run_dir("abc")                                  # too short to be a hash prefix


@pytest.mark.parametrize("over", [{}, {"ema": 0.9}, {"ensemble": 2}], ids=["single", "ema", "ensemble"])
def test_eval_on_the_runs_own_validation_split_gives_its_recorded_loss(over, isolated, capsys):
    """`eval RUN --data val` scores the run's final weights (an EMA run's averaged weights, every member of an
    ensemble) on the validation split it was trained with: its official and full-coverage losses are the
    recorded ones, exactly."""
    import mainrun
    from mainrun import ledger
    name = "v-" + ("-".join(over) or "single")
    summary = mainrun.run(mainrun.make_config("smoke", name=name, epochs=1, **over), progress=False)
    assert summary["status"] == "finished"
    capsys.readouterr()
    assert cli.main(["eval", name, "--data", "val"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "val" and out["tokens"] == summary["val_tokens"] and out["chars"] == summary["val_chars"]
    assert out["official_loss"] == summary["final_val_loss"] and out["full_loss"] == summary["full_val_loss"]
    run = ledger.find_run(ledger.results_root("smoke"), summary["hash"])
    meta = json.loads((run / "config.json").read_text())      # another split (other data): refused, one line
    (run / "config.json").write_text(json.dumps({**meta, "data_fingerprint": "0" * 64}))
    assert cli.main(["eval", name, "--data", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data val" in err and name in err and "MAINRUN_DATA" in err
