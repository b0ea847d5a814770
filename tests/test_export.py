"""Export: a recipe as the original's single train.py. The script gives the package's losses bit for bit, writes
the original's log, keeps a checkout's evaluate() byte for byte, runs under `task train`, and the committed
submission trees are what `make run` regenerates."""
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mainrun
import mainrun.export as export
import mainrun.ledger as ledger
from conftest import ROOT, have_standin, isolated_module
from mainrun.config import make_config

needs_data = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")

# The tests' size (MAINRUN_EXPORT_TEST): seconds a run. Batches stay the official 64 x 128, the shape the original's
# evaluate() scores at; two layers so that the U-net skips of final7 are exercised; no compile (not bit-stable).
SMOKE = dict(num_titles=4000, vocab_size=512, n_layer=2, n_head=2, d_model=32, epochs=1, evals_per_epoch=2,
             compile=False, device="cpu", precision="fp32")
RECIPES = ("baseline", "epic1", "final", "final7", "final8")
# The original's events and the fields each carries (MaincodeHQ/mainrun, mainrun/train.py and logs/baseline.log).
ORIGINAL_HYPERPARAMETERS = dict(block_size=128, batch_size=64, vocab_size=16_000, n_layer=6, n_head=8, d_model=512,
                                dropout=0.1, lr=6e-3, weight_decay=0.0, evals_per_epoch=3, epochs=7, seed=1337,
                                num_titles=100_000, val_frac=0.1, log_file="./logs/mainrun.log")
ORIGINAL_EVENTS = {"device_info": {"device"},
                   "dataset_info": {"titles_count", "epochs", "batches_per_epoch", "tokens_per_epoch", "vocab_size"},
                   "model_info": {"parameters_count"},
                   "training_step": {"step", "max_steps", "loss", "elapsed_time", "prnt"},
                   "validation_step": {"step", "max_steps", "loss", "elapsed_time"}}


def script_env(**extra) -> dict:
    return {**os.environ, "MAINRUN_EXPORT_TEST": json.dumps(SMOKE), "OMP_NUM_THREADS": "1", "PYTHONPATH": "",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def run_script(mainrun_dir: Path) -> list[dict]:
    r = subprocess.run([sys.executable, "train.py"], cwd=mainrun_dir, env=script_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "MAINRUN_DATA is set" in r.stdout and "MAINRUN_EXPORT_TEST is set" in r.stdout
    return ledger.read_log(mainrun_dir / "logs" / "mainrun.log")


def losses(events: list[dict]) -> dict:
    return {kind: [(e["step"], e["loss"]) for e in events if e["event"] == kind]
            for kind in ("training_step", "validation_step")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_cache):
    """Each recipe trained at the tests' size twice, once by its exported script (a subprocess) and once by the
    package, computed on first use: recipe -> (exported tree, script's events, package's events)."""
    done = {}

    def get(recipe: str):
        if recipe not in done:
            with isolated_module(tmp_path_factory, shared_cache, f"export-{recipe}") as tmp:
                tree = export.export_out(recipe, tmp / "sub", report=False)
                script = run_script(tree / "mainrun")
                mainrun.run(make_config("full", recipe, checkpoint_every=0, **SMOKE), progress=False)
                (run_dir,) = (tmp / "results" / "runs").glob("*")
                done[recipe] = tree, script, ledger.read_log(run_dir / "log.jsonl")
        return done[recipe]
    return get


@needs_data
@pytest.mark.parametrize("recipe", RECIPES)
def test_exported_script_gives_the_package_losses_bit_for_bit(runs, recipe):
    _, script, package = runs(recipe)
    ours, theirs = losses(script), losses(package)
    assert len(ours["training_step"]) >= 10 and [s for s, _ in ours["validation_step"]][0] == 1
    assert ours == theirs                       # every step's training loss and every validation loss, exactly
    lrs = lambda ev: [e["lr"] for e in ev if e["event"] == "training_step"]  # noqa: E731
    assert lrs(script) == lrs(package)
    count = lambda ev: next(e["parameters_count"] for e in ev if e["event"] == "model_info")  # noqa: E731
    assert count(script) == count(package)


@needs_data
def test_exported_log_is_the_originals(runs):
    tree, events, _ = runs("final")
    assert all(set(e) >= {"event", "timestamp"} and isinstance(e["timestamp"], float) for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[:4] == ["hyperparameters_configured", "device_info", "dataset_info", "model_info"]
    assert set(kinds) == {"hyperparameters_configured", *ORIGINAL_EVENTS}
    assert set(events[0]) >= set(ORIGINAL_HYPERPARAMETERS) and events[0]["log_file"] == "./logs/mainrun.log"
    for e in events[1:]:
        assert set(e) >= ORIGINAL_EVENTS[e["event"]], e
    info = events[2]
    steps = [e for e in events if e["event"] == "training_step"]
    vals = [e for e in events if e["event"] == "validation_step"]
    max_steps = info["epochs"] * info["batches_per_epoch"]
    assert [e["step"] for e in steps] == list(range(1, max_steps + 1))
    assert all(e["max_steps"] == max_steps and e["prnt"] is False and isinstance(e["loss"], float) for e in steps)
    interval = info["batches_per_epoch"] // SMOKE["evals_per_epoch"]
    assert [e["step"] for e in vals] == sorted({1, max_steps, *range(interval, max_steps + 1, interval)})
    at = {e["step"]: e["elapsed_time"] for e in steps}
    assert all(e["elapsed_time"] == at[e["step"]] for e in vals)     # as the original: the step's time
    # the workbench's reader of Mainrun logs (it reads the original's baseline.log) reads this one
    progress = ledger.log_progress(tree / "mainrun" / "logs" / "mainrun.log")
    assert progress["last_step"] == max_steps and progress["last_val_loss"] == vals[-1]["loss"]


def test_template_defaults_are_the_original_recipe():
    defaults = export.template_defaults()
    assert {k: defaults[k] for k in ORIGINAL_HYPERPARAMETERS} == ORIGINAL_HYPERPARAMETERS
    base = make_config("full")
    assert all(defaults[k] == getattr(base, k) for k in defaults if k != "log_file")
    imports = [n for n in ast.walk(ast.parse(export.TEMPLATE.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in imports if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in imports if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in imports)       # no relative import
    assert names - set(sys.stdlib_module_names) == set(export.SCRIPT_NEEDS)           # torch, datasets, ...


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location("exported_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ns", ["bf16", "fp32"])
def test_scripts_muon_is_torchs(ns):
    """The script's own Muon (it runs on the original's torch 2.7, which has none) against torch.optim.Muon
    (bf16 Newton-Schulz) and the package's Fp32Muon: the same weights after three steps, tall and wide."""
    from mainrun.optim import Fp32Muon
    script = load_script(export.TEMPLATE)
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 48), (32, 32)]
    a = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    kw = dict(lr=0.02, weight_decay=0.05, momentum=0.95, nesterov=True, ns_steps=3)
    ours = script.Muon(a, ns_dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[ns], **kw)
    theirs = (torch.optim.Muon if ns == "bf16" else Fp32Muon)(b, **kw)
    for _ in range(3):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for ps, opt in ((a, ours), (b, theirs)):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            opt.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- --into a stand-in checkout
# A minimal restatement of the original repository's layout and interfaces (written for these tests): a
# Hyperparameters dataclass, get_titles() from the hub, the devcontainer check `import utils`, and an evaluate()
# inside main() that reads main()'s model, val_ids, val_text, args and device.
STANDIN_TRAIN = '''\
import utils
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from datasets import load_dataset


@dataclass
class Hyperparameters:
    block_size: int = 128
    batch_size: int = 64
    vocab_size: int = 16_000
    lr: float = 6e-3
    epochs: int = 7
    seed: int = 1337
    num_titles: int = 100_000
    val_frac: float = 0.10
    log_file: str = "./logs/mainrun.log"


def get_titles(num_titles, seed, val_frac):
    ds = load_dataset("julien040/hacker-news-posts", split="train", cache_dir="./data").shuffle(seed=seed)
    titles = [row["title"].strip() for row in ds.take(num_titles)]
    n = int(num_titles * (1 - val_frac))
    return titles[:n], titles[n:]


def iter_full_split(split_ids, block_size, batch_size, device):
    span = block_size * batch_size + 1
    for ptr in range(0, len(split_ids) - span + 1, span):
        part = split_ids[ptr: ptr + span]
        yield part[:-1].view(batch_size, block_size).to(device), part[1:].view(batch_size, block_size).to(device)


def main():
    args = Hyperparameters()
    device = "cpu"
    model = val_ids = val_text = None  # the stand-in does not train

    def evaluate():
        # the stand-in's own wording: summed cross-entropy over the spans, per character
        model.eval()
        total = 0.0
        with torch.no_grad():
            for xb, yb in iter_full_split(val_ids, args.block_size, args.batch_size, device):
                logits, _ = model(xb, yb)
                B, T, V = logits.size()
                total += F.cross_entropy(logits.view(-1, V), yb.view(-1), reduction='sum').item()
        model.train()
        return total / len(val_text)

    print(evaluate)


if __name__ == "__main__":
    main()
'''


@pytest.fixture(autouse=True)
def standin_evaluate_is_the_original(monkeypatch):
    """The stand-in's evaluate() plays the original's (whose code is not ours to copy into these tests):
    export_into accepts it as unchanged, and refuses another (tests/test_engine_edges.py)."""
    monkeypatch.setattr(export, "ORIGINAL_EVALUATE", export.evaluate_fingerprint(export.evaluate_source(STANDIN_TRAIN)))


def standin_checkout(root: Path, train: str = STANDIN_TRAIN) -> Path:
    (root / "mainrun").mkdir(parents=True)
    (root / ".devcontainer").mkdir()
    (root / "scripts").mkdir()
    (root / "mainrun" / "train.py").write_text(train)
    (root / "mainrun" / "utils.py").write_text("# the stand-in's devcontainer check: nothing to check here\n")
    (root / ".devcontainer" / "requirements.txt").write_text("datasets==4.0.0\ntokenizers==0.21.2\ntorch==2.7.1\n"
                                                             "tqdm==4.67.1\n")
    (root / "Taskfile.yml").write_text("version: '3'\ntasks:\n  train:\n    dir: mainrun\n    cmds:\n"
                                       "      - python3 train.py\n")
    return root


def test_into_keeps_the_checkouts_evaluate_byte_for_byte(tmp_path):
    co = standin_checkout(tmp_path / "co")
    before = export.evaluate_source(STANDIN_TRAIN)
    written = export.export_into("final", co)
    after = (co / "mainrun" / "train.py").read_text()
    assert export.evaluate_source(after) == before and after.count(before) == 1
    assert "def evaluate():\n        \"\"\"The official metric" not in after        # the template's own is gone
    assert after.startswith('"""Mainrun train.py: the preset `final`') and "\nimport utils  #" in after
    assert "optimizer: str = \"muon\"" in after and "import mainrun" not in after
    assert (co / "mainrun" / "report.pdf").read_bytes() == (ROOT / "mainrun" / "report.pdf").read_bytes()
    md = (co / "mainrun" / "SUBMISSION.md").read_text()
    assert "- `optimizer`: \"sgd\" -> \"muon\"" in md and "checkout's own, kept byte for byte" in md
    assert "nothing was added" in md                                           # torch, datasets... are listed
    assert (co / ".devcontainer" / "requirements.txt").read_text().count("\n") == 4
    assert {p.relative_to(co).as_posix() for p in written} == {"mainrun/train.py", "mainrun/report.pdf",
                                                               "mainrun/SUBMISSION.md"}
    export.export_into("final", co)                                            # again: the same file
    assert (co / "mainrun" / "train.py").read_text() == after


@needs_data
def test_into_script_trains_to_the_same_numbers(tmp_path, runs):
    """The checkout's evaluate() spliced in gives the package's validation losses too."""
    _, _, package = runs("final")
    co = standin_checkout(tmp_path / "co")
    export.export_into("final", co)
    assert losses(run_script(co / "mainrun")) == losses(package)


def test_into_adds_what_the_checkouts_requirements_lack(tmp_path):
    co = standin_checkout(tmp_path / "co")
    req = co / ".devcontainer" / "requirements.txt"
    req.write_text("datasets==4.0.0\ntorch==2.7.1\n")
    written = export.export_into("final", co)
    assert req in written and req.read_text().splitlines() == ["datasets==4.0.0", "torch==2.7.1",
                                                               *(export.our_pins()[k] for k in ("tokenizers", "tqdm"))]
    assert "lacked tokenizers==" in (co / "mainrun" / "SUBMISSION.md").read_text()


def test_into_refuses_what_breaks_the_rules(tmp_path):
    co = standin_checkout(tmp_path / "a", STANDIN_TRAIN.replace("epochs: int = 7", "epochs: int = 8"))
    with pytest.raises(export.ExportError, match=r"epochs=7 \(the checkout fixes 8\)"):
        export.export_into("final", co)
    co = standin_checkout(tmp_path / "b", STANDIN_TRAIN.replace("    def evaluate():", "    def score():")
                          .replace("print(evaluate)", "print(score)"))
    with pytest.raises(export.ExportError, match="no evaluate\\(\\) defined inside main"):
        export.export_into("final", co)
    co = standin_checkout(tmp_path / "c", STANDIN_TRAIN.replace("len(val_text)", "val_chars"))
    with pytest.raises(export.ExportError, match="uses val_chars, which the exported script does not define"):
        export.export_into("final", co)
    with pytest.raises(export.ExportError, match="no mainrun/train.py"):
        export.export_into("final", tmp_path / "empty")
    assert not (tmp_path / "a" / "mainrun" / "SUBMISSION.md").exists()        # nothing written on a refusal


def test_recipes_that_break_the_rules_or_the_script_are_refused():
    for over, match in ((dict(epochs=8), "changes what the Mainrun rules fix: epochs=8"),
                        (dict(train_seed=1338), "train_seed=1338"),
                        (dict(num_titles=50_000), "num_titles=50000"),
                        (dict(value_embed=True), "value_embed=True, which the exported script does not implement"),
                        (dict(mlp="swiglu"), "mlp='swiglu'; the exported script accepts mlp in 'gelu', 'relu2'"),
                        (dict(batch_size=32), "batch_size=32"),
                        (dict(eval_precision="bf16"), "eval_precision='bf16'")):
        with pytest.raises(export.ExportError, match=match):
            export.check_recipe(export.Recipe("test", make_config("full", **over)))
    export.check_recipe(export.Recipe("test", make_config("full", "final7")))


def test_unknown_recipe_names_what_is_accepted(tmp_path, capsys):
    from mainrun import cli
    assert cli.main(["export", "final9", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "recipe 'final9' is neither a preset (baseline, epic1, epic2, final," in err and "hash" in err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- task train, committed trees
def task_binary() -> str | None:
    here = Path(sys.executable).parent / "task"
    return str(here) if here.exists() else shutil.which("task")


@needs_data
@pytest.mark.skipif(task_binary() is None, reason="the Task binary is missing (pip install go-task-bin, "
                                                   "requirements.txt)")
def test_task_train_runs_an_exported_tree(tmp_path):
    tree = export.export_out("final", tmp_path / "sub", report=False)
    r = subprocess.run([task_binary(), "train"], cwd=tree, env=script_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "checkpoint: no scripts/checkpoint.mjs" in r.stdout + r.stderr
    events = ledger.read_log(tree / "mainrun" / "logs" / "mainrun.log")
    assert [e["event"] for e in events][-1] == "validation_step"
    assert events[2]["source"] == f"file:{Path(os.environ['MAINRUN_DATA']).name}"


def test_committed_submissions_are_what_make_run_regenerates(tmp_path):
    export.export_recommended(tmp_path)           # the committed ledger, though MAINRUN_RESULTS is a test's here
    committed = ROOT / export.SUBMISSION_ROOT
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    # a run of a committed tree leaves its outputs there (mainrun/logs, the data cache): they are not the tree's
    run_outputs = [f for f in files(committed) if f.split("/", 1)[1].startswith(("mainrun/logs/", "mainrun/data/"))
                   or "__pycache__" in f]
    assert files(tmp_path) == sorted(set(files(committed)) - set(run_outputs)) != []
    for rel in files(tmp_path):
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), (
            f"{committed / rel} is stale: `python -m mainrun export --recommended` (make run) regenerates it")
    assert set(export.RECOMMENDED) == {p.name for p in committed.iterdir()}


def test_recommended_runs_are_the_ledgers_best(monkeypatch):
    """final: the lowest official single-model loss among the runs on the baseline's CPU (fp32, AVX2) that took
    60 minutes or less; best: the lowest official loss of a CPU run that the exported script reproduces (one
    made under the code version this code gives its config)."""
    from mainrun.config import code_version, latest_code_version, recorded_config
    monkeypatch.setenv("MAINRUN_RESULTS", str(ROOT / "results"))
    runs = [r for r in ledger.load_runs(ROOT / "results") if r["status"] == "finished" and r["summary"]["official"]]
    cpu = [r for r in runs if r["config"]["device"] == "cpu"]
    budget = [r for r in cpu if r["config"]["precision"] == "fp32" and r["config"].get("ensemble", 1) == 1
              and r["summary"]["wall_time_s"] <= 3600]
    current = [r for r in cpu if code_version(c := recorded_config(r["config"])) == latest_code_version(c)]
    best = lambda rs: min(rs, key=lambda r: r["summary"]["final_val_loss"])["hash"]  # noqa: E731
    assert export.RECOMMENDED == {"final": best(budget), "best": best(current)}
    assert best(cpu) not in export.RECOMMENDED.values() or best(cpu) == best(current)