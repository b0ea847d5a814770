"""A recipe as a Mainrun submission: the original's single mainrun/train.py, run by `task train`.

    python -m mainrun export final --into ~/mainrun        # a clone of MaincodeHQ/mainrun becomes the submission
    python -m mainrun export final --out SUB               # the same tree, without a checkout
    python -m mainrun export --recommended                 # results/submission/<name>/ (make run)

The script is mainrun/submission_template.py, a hand-written, self-contained training script, with its
Hyperparameters dataclass filled with the recipe's values. With --into, its `evaluate()` is replaced by the
checkout's own, spliced through the AST and checked byte for byte: the rules forbid changing it. A recipe that
changes what the rules fix (epochs, seed, dataset, validation fraction), or uses a part the script does not
implement, is refused. The script and the package give bit-identical losses (tests/test_export.py).
"""
from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import symtable
import tempfile
from pathlib import Path
from typing import Any

from . import ledger
from .config import HUB_DATASET, PRESETS, Config, from_dict, make_config, rules_check
from .data import atomic_write_bytes, repo_root

TEMPLATE = Path(__file__).with_name("submission_template.py")
# The two recommended submissions, committed under results/submission/<name>/ by `make run`:
#  - final: the best single model whose 7 epochs fit the 60-minute budget on the baseline's CPU (2-core AVX2
#    AMD EPYC, fp32): 56.2 min. final2-final6 score lower on that CPU but took 61.8-86.8 min there.
#  - final7: the best recipe overall, three final4 models averaged in probability; it fits 60 minutes only
#    on a CPU with native bf16 (compiled, bf16), where its seed-1337 run took 48.5 min.
RECOMMENDED = {"final": "c691762915e5", "final7": "8fa20090e71f"}
SUBMISSION_ROOT = Path("results") / "submission"
# What the exported script imports beyond the standard library: all four are in the original's requirements.
SCRIPT_NEEDS = ("torch", "datasets", "tokenizers", "tqdm")
# Config fields that never reach the script: run bookkeeping (names, where the data and checkpoints live).
BOOKKEEPING = ("name", "profile", "preset", "data", "checkpoint_every")
# Values of the script's fields that it does not implement. The original's evaluate() scores spans of
# batch_size x block_size, so a recipe must train at the official 64 x 128 to be scored as the package scores it.
LIMITS: dict[str, tuple] = {"init": ("normal", "scaled_residual"), "mlp": ("gelu", "relu2"),
                            "batch_size": (64,), "block_size": (128,)}
RULE_FIELDS = ("epochs", "seed", "num_titles", "val_frac")
# What every exported script does differently from the original's train.py, whatever the recipe.
CODE_CHANGES = (
    "Attention through `F.scaled_dot_product_attention` (causal) instead of an explicit masked softmax; the "
    "MLP's layers are named `fc` and `out`.",
    "Learning rates come from a schedule function of the step (the baseline's is the original's cosine, "
    "written out), so one schedule drives one or two optimizers.",
    "The titles come from the file named by `MAINRUN_DATA` when it is set (the hub dataset otherwise), and the "
    "script says so; a blank title is kept as an empty string.",
    "The log keeps the original's events and fields in `mainrun/logs/mainrun.log`, adding `lr` to "
    "`training_step`, `precision` to `device_info` and `source` to `dataset_info`; no structlog.",
)
EVALUATE_NOTE = {
    "into": "`evaluate()` is the checkout's own, kept byte for byte (spliced through the AST and checked).",
    "out": "`evaluate()` is the workbench's restatement of the original's (the same arithmetic); "
           "`python -m mainrun export RECIPE --into CHECKOUT` keeps a checkout's own, byte for byte.",
}


class ExportError(ValueError):
    """A recipe or checkout that cannot be exported."""


@dataclasses.dataclass
class Recipe:
    label: str                       # how SUBMISSION.md names it
    config: Config
    run: dict | None = None          # the ledger run it reproduces: {'dir', 'config', 'summary', ...}
    seeds: list = dataclasses.field(default_factory=list)   # other seeds of the same recipe in the ledger


# ----------------------------------------------------------------------------- recipes
def _ledger_runs() -> list[dict]:
    return [r for r in ledger.load_runs(ledger.results_root("full")) if r["status"] == "finished"]


def _same_recipe(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> bool:
    """Equal in everything that changes a run's numbers; an `auto` device or precision matches any."""
    da, db = a.to_dict(), b.to_dict()
    for k in (*BOOKKEEPING, *ignore):
        da.pop(k), db.pop(k)
    for k in ("device", "precision"):
        if "auto" in (da[k], db[k]):
            da.pop(k), db.pop(k)
    return da == db


def resolve_recipe(spec: str) -> Recipe:
    """A preset name, or a finished run of the full ledger (its name, folder name, hash or a 4+ character hash
    prefix), as a config plus the ledger run it reproduces."""
    runs = _ledger_runs()
    configs = {id(r): from_dict(r["config"]) for r in runs}
    if spec in PRESETS:
        cfg = make_config("full", spec)
        label = f"preset `{spec}`"
        hits = [r for r in runs if _same_recipe(cfg, configs[id(r)])]
        # several devices may have run it: an official CPU run first (the budget is the CPU's), then by name
        run = min(hits, key=lambda r: (not r["summary"].get("official"), r["config"]["device"] != "cpu",
                                       r["dir"].name)) if hits else None
    else:
        def name(r):
            return r["dir"].name[: -len(r["hash"]) - 1] if r["dir"].name.endswith("-" + r["hash"]) else r["dir"].name
        is_prefix = len(spec) >= 4 and all(c in "0123456789abcdef" for c in spec)
        hits = []
        for match in (lambda r: r["dir"].name == spec, lambda r: r["hash"] == spec, lambda r: name(r) == spec,
                      lambda r: is_prefix and r["hash"].startswith(spec)):
            hits = [r for r in runs if match(r)]
            if hits:
                break
        if len(hits) != 1:
            where = ledger.display_path(ledger.results_root("full"))
            if hits:
                raise ExportError(f"recipe {spec!r} names {len(hits)} runs ({', '.join(r['dir'].name for r in hits)}); "
                                  f"name one by its folder name or hash")
            raise ExportError(f"recipe {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a finished run in "
                              f"{where} (its name, folder name <name>-<hash>, hash or a 4+ character hash prefix; "
                              f"`python -m mainrun list` lists them)")
        run = hits[0]
        cfg = configs[id(run)]
        label = f"ledger run `{run['dir'].name}`"
    seeds = [] if run is None else sorted(
        (r for r in runs if _same_recipe(configs[id(run)], configs[id(r)], ignore=("train_seed",))),
        key=lambda r: configs[id(r)].rng_seed)
    return Recipe(label=label, config=cfg, run=run, seeds=seeds)


def check_recipe(recipe: Recipe) -> None:
    """Refuse a recipe that changes what the Mainrun rules fix, or uses what the script does not implement."""
    cfg = recipe.config
    source = (ledger.read_json(recipe.run["dir"] / "config.json") or {}).get("data_source", {}) if recipe.run \
        else {"kind": "hub", "dataset": HUB_DATASET}
    ok, reasons = rules_check(cfg, source)
    if not ok:
        raise ExportError(f"{recipe.label} changes what the Mainrun rules fix: {'; '.join(reasons)}; "
                          f"a submission keeps epochs=7, seed=1337, num_titles=100000, val_frac=0.1 and the dataset")
    fields = template_fields()
    base = make_config("full")
    for k, v in cfg.to_dict().items():
        if k in BOOKKEEPING or k == "train_seed":           # train_seed: -1 or 1337 here (rules_check)
            continue
        if k not in fields and v != getattr(base, k):
            raise ExportError(f"{recipe.label} sets {k}={v!r}, which the exported script does not implement; it "
                              f"implements the baseline plus: {', '.join(f for f in fields if f != 'log_file')}")
        if k in LIMITS and v not in LIMITS[k]:
            raise ExportError(f"{recipe.label} sets {k}={v!r}; the exported script accepts {k} in "
                              f"{', '.join(map(repr, LIMITS[k]))}")


# ----------------------------------------------------------------------------- the script
def _template() -> str:
    return TEMPLATE.read_text()


def _class_fields(tree: ast.Module, name: str) -> list[ast.AnnAssign]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    raise ExportError(f"no class {name} in the script")


def template_fields() -> list[str]:
    """The Hyperparameters fields of the template, in order."""
    return [n.target.id for n in _class_fields(ast.parse(_template()), "Hyperparameters")]


def template_defaults() -> dict[str, Any]:
    return {n.target.id: ast.literal_eval(n.value) for n in _class_fields(ast.parse(_template()), "Hyperparameters")}


def field_comments() -> dict[str, str]:
    """The comment of each Hyperparameters field in the template (its line's trailing comment)."""
    lines = _template().splitlines()
    out = {}
    for n in _class_fields(ast.parse(_template()), "Hyperparameters"):
        _, _, comment = lines[n.lineno - 1].partition("  # ")
        out[n.target.id] = comment.strip()
    return out


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return repr(v)
    if isinstance(v, int):
        return f"{v:_}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return repr(v)
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The recipe's value of every template field (the log file stays the original's)."""
    defaults = template_defaults()
    return {k: (defaults[k] if k == "log_file" else getattr(cfg, k)) for k in defaults}


def fill(template: str, values: dict[str, Any], headline: str) -> str:
    """The template with the Hyperparameters defaults replaced by `values`, comments kept in their column."""
    lines = template.splitlines(keepends=True)
    for n in _class_fields(ast.parse(template), "Hyperparameters"):
        line = lines[n.lineno - 1]
        head, tail = line[: n.value.col_offset], line[n.value.end_col_offset:]
        new = head + _literal(values[n.target.id])
        m = re.match(r"( +)(#.*\n?)$", tail)
        if m:                                   # keep the comment where it was, at least two spaces after
            tail = " " * max(2, len(line) - len(tail) + len(m.group(1)) - len(new)) + m.group(2)
        lines[n.lineno - 1] = new + tail
    text = "".join(lines)
    assert text.count("RECIPE_LINE") == 1
    return text.replace("RECIPE_LINE", headline)


def _main_evaluate(tree: ast.Module) -> ast.FunctionDef | None:
    """The function `evaluate` defined directly in the module's `main()`, as the original defines it."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and sub.name == "evaluate":
                    return sub
    return None


def _span(node: ast.FunctionDef) -> tuple[int, int]:
    """0-based [first, last) line numbers of a function with its decorators."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return first - 1, node.end_lineno


def evaluate_source(source: str, where: str = "the checkout's mainrun/train.py") -> str:
    """The exact text (whole lines) of `evaluate()` inside `main()`; refuses a file without one."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ExportError(f"{where} does not parse: {e}") from None
    node = _main_evaluate(tree)
    if node is None:
        raise ExportError(f"{where} has no evaluate() defined inside main(), as the original has; the export "
                          f"keeps that function and needs to find it there")
    if node.args.args or node.args.posonlyargs or node.args.kwonlyargs or node.args.vararg or node.args.kwarg:
        raise ExportError(f"{where}'s evaluate() takes arguments; the script calls it as the original does, "
                          f"evaluate()")
    first, last = _span(node)
    return "".join(source.splitlines(keepends=True)[first:last])


def splice_evaluate(script: str, evaluate_text: str) -> str:
    """The script with its evaluate() replaced by `evaluate_text` verbatim, checked to survive byte for byte
    and to find every name it uses in the script."""
    node = _main_evaluate(ast.parse(script))
    first, last = _span(node)
    lines = script.splitlines(keepends=True)
    indent = lambda s: len(s) - len(s.lstrip(" \t"))  # noqa: E731
    if indent(evaluate_text) != indent(lines[first]):
        raise ExportError(f"the checkout's evaluate() is indented by {indent(evaluate_text)} characters; the script's "
                          f"main() body by {indent(lines[first])}: it cannot be kept byte for byte")
    if not evaluate_text.endswith("\n"):
        evaluate_text += "\n"
    out = "".join(lines[:first]) + evaluate_text + "".join(lines[last:])
    if evaluate_source(out, "the exported script") != evaluate_text:
        raise ExportError("the spliced evaluate() did not survive byte for byte")
    missing = sorted(unbound_names(out))
    if missing:
        raise ExportError(f"the checkout's evaluate() uses {', '.join(missing)}, which the exported script does not "
                          f"define")
    return out


def unbound_names(script: str) -> set[str]:
    """Names that main()'s evaluate() reads but neither main() nor the module (nor builtins) define."""
    import builtins

    top = symtable.symtable(script, "train.py", "exec")
    main = next(t for t in top.get_children() if t.get_name() == "main")
    ev = next(t for t in main.get_children() if t.get_name() == "evaluate")
    module_names = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    main_names = {s.get_name() for s in main.get_symbols() if s.is_assigned() or s.is_imported()}
    missing = {n for n in ev.get_frees() if n not in main_names}

    def globals_of(t) -> set[str]:
        out = {s.get_name() for s in t.get_symbols() if s.is_global() and s.is_referenced()}
        for c in t.get_children():
            out |= globals_of(c)
        return out
    missing |= {n for n in globals_of(ev) if n not in module_names and not hasattr(builtins, n)}
    return missing


def _imports_utils(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Import) and any(a.name == "utils" for a in n.names) for n in tree.body)


def render(recipe: Recipe, evaluate_text: str | None = None, import_utils: bool = False) -> str:
    """The exported train.py: the template filled with the recipe; the checkout's evaluate() if given; the
    original's `import utils` (its devcontainer check) first among the imports if the checkout has it."""
    headline = f"the {recipe.label} of the mainrun workbench."
    script = fill(_template(), hyperparameters(recipe.config), headline)
    if evaluate_text is not None:
        script = splice_evaluate(script, evaluate_text)
    if import_utils:
        first = next(n for n in ast.parse(script).body if isinstance(n, (ast.Import, ast.ImportFrom)))
        lines = script.splitlines(keepends=True)
        lines.insert(first.lineno - 1, "import utils  # the original's devcontainer check (mainrun/utils.py)\n")
        script = "".join(lines)
    compile(script, "train.py", "exec")
    return script


# ----------------------------------------------------------------------------- the checkout
def checkout_rules(source: str) -> dict[str, Any]:
    """The values the checkout's train.py fixes by the rules: its Hyperparameters defaults for epochs, seed,
    num_titles and val_frac, and the hub dataset it loads."""
    tree = ast.parse(source)
    try:
        found = {n.target.id: ast.literal_eval(n.value) for n in _class_fields(tree, "Hyperparameters")
                 if n.value is not None}
    except ExportError:
        raise ExportError("the checkout's mainrun/train.py has no Hyperparameters dataclass; is it a clone of "
                          "MaincodeHQ/mainrun?") from None
    missing = [k for k in RULE_FIELDS if k not in found]
    if missing:
        raise ExportError(f"the checkout's Hyperparameters lacks {', '.join(missing)}; is it a clone of "
                          f"MaincodeHQ/mainrun?")
    datasets = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and c.args
                and getattr(c.func, "id", getattr(c.func, "attr", None)) == "load_dataset"
                and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)}
    return {**{k: found[k] for k in RULE_FIELDS}, "datasets": datasets}


def check_against_checkout(recipe: Recipe, fixed: dict[str, Any]) -> None:
    cfg = recipe.config
    differ = [f"{k}={getattr(cfg, k)!r} (the checkout fixes {fixed[k]!r})" for k in RULE_FIELDS
              if getattr(cfg, k) != fixed[k]]
    if fixed["datasets"] and HUB_DATASET not in fixed["datasets"]:
        differ.append(f"dataset {HUB_DATASET} (the checkout loads {', '.join(sorted(fixed['datasets']))})")
    if differ:
        raise ExportError(f"{recipe.label} differs from what the checkout's train.py fixes by the rules: "
                          f"{'; '.join(differ)}")


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\s\[=<>!~;]", line, 1)[0].lower().replace("_", "-"))
    return names


def our_pins() -> dict[str, str]:
    """This repository's requirement line for each package the script imports."""
    pins = {}
    for line in (repo_root() / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        name = re.split(r"[\s\[=<>!~;]", spec, 1)[0].lower() if spec else ""
        if name in SCRIPT_NEEDS:
            pins[name] = spec
    return {k: pins.get(k, k) for k in SCRIPT_NEEDS}


# ----------------------------------------------------------------------------- SUBMISSION.md
def _fmt_min(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _baseline_run() -> dict | None:
    base = make_config("full")
    runs = [r for r in _ledger_runs() if _same_recipe(base, from_dict(r["config"]))]
    return min(runs, key=lambda r: r["dir"].name) if runs else None


def submission_md(recipe: Recipe, mode: str, requirements_note: str, report: bool = True) -> str:
    """SUBMISSION.md: what the script reproduces, what it changes against the original, what it measured."""
    cfg = recipe.config
    values, defaults, comments = hyperparameters(cfg), template_defaults(), field_comments()
    out = [f"# Submission: the {recipe.label} of the mainrun workbench", ""]
    out += ["`train.py` is one self-contained training script exported by `python -m mainrun export` from the "
            "workbench's template (`mainrun/submission_template.py`), with the recipe's values in its "
            "`Hyperparameters` dataclass. "
            + ("`report.pdf` beside it is the workbench's report." if report else
               "The workbench's report is its `mainrun/report.pdf`; `export --into` and `--out` copy it beside "
               "train.py."), ""]
    out += ["## The ledger run it reproduces", ""]
    run = recipe.run
    if run is None:
        out += ["No finished run of this recipe is in the workbench's ledger (`results/runs/`): it has not been "
                "measured.", ""]
    else:
        s, meta = run["summary"], ledger.read_json(run["dir"] / "config.json") or {}
        src = meta.get("data_source", {})
        hw = s.get("hardware", {})
        commit = (s.get("git_commit") or "")[:12] or "not recorded"
        out += [f"`results/runs/{run['dir'].name}` (hash `{run['hash']}`, preset `{run['config'].get('preset')}`), "
                f"trained at workbench commit `{commit}` with torch {s.get('torch_version', '-')}.", ""]
        base = _baseline_run()
        ratio = ""
        if base is not None and base["summary"].get("final_val_loss"):
            b = base["summary"]["final_val_loss"]
            ratio = f"; the workbench's run of the original recipe (`{base['dir'].name}`) scored {b:.4f} on the same data"
        out += ["## Measured result (from the ledger)", "",
                "| | |", "|---|---|",
                f"| validation loss, `evaluate()` | **{s['final_val_loss']:.4f}** |",
                f"| full-coverage validation loss (every validation token) | {s['full_val_loss']:.4f} |"]
        if base is not None and base["summary"].get("final_val_loss"):
            out += [f"| ratio to the original recipe's run on the same data | "
                    f"{s['final_val_loss'] / base['summary']['final_val_loss']:.3f} |"]
        out += [f"| steps | {s['steps']} |",
                f"| parameters | {s['n_params']:,} |",
                f"| wall time | {_fmt_min(s.get('wall_time_s'))} ({_fmt_min(s.get('train_time_s'))} in training steps) |",
                f"| hardware | {s.get('device', cfg.device)}, {hw.get('cpu', '-')}, {hw.get('cpu_count', '-')} cores, "
                f"{s.get('precision', cfg.precision)} |",
                f"| data | `{src.get('name', src.get('dataset', '-'))}` (sha256 `{str(src.get('sha256', '-'))[:12]}`) |",
                ""]
        if len(recipe.seeds) > 1:
            losses = [(from_dict(r["config"]).rng_seed, r["summary"]["final_val_loss"]) for r in recipe.seeds]
            mean = sum(v for _, v in losses) / len(losses)
            sd = (sum((v - mean) ** 2 for _, v in losses) / (len(losses) - 1)) ** 0.5
            out += ["Seeds of this recipe in the ledger: " + ", ".join(f"{k}: {v:.4f}" for k, v in losses)
                    + f"; mean {mean:.4f} +- {sd:.4f} (sample sd).", ""]
        out += ["The workbench's data is an offline stand-in for the hub dataset (Hacker News stories 2016-2020), so "
                "absolute losses differ from the original's published baseline of 1.754 on the hub" + ratio + ".", ""]
    out += ["## What it changes against the original `train.py`", "", "The recipe (`Hyperparameters`):", ""]
    for k, v in values.items():
        if v != defaults[k]:
            out.append(f"- `{k}`: {_literal(defaults[k])} -> {_literal(v)} ({comments[k]})")
    if all(values[k] == defaults[k] for k in values):
        out.append("- none: the original's recipe")
    out += ["", "The code, whatever the recipe:", ""] + [f"- {c}" for c in (*CODE_CHANGES, EVALUATE_NOTE[mode])]
    offline = ("Offline, set `MAINRUN_DATA=/path/to/titles.parquet`: the download step and the script then read "
               "that file." if mode == "out" else
               "The checkout's download step fetches the hub dataset; offline, run the script alone with "
               "`MAINRUN_DATA=/path/to/titles.parquet` set, and it reads that file.")
    out += ["", "## Running it", "",
            "`task train` runs the checkpoint and download steps, then `python3 train.py` in `mainrun/`, which "
            f"writes `mainrun/logs/mainrun.log`. {offline} The checkpoint step runs `npx zx` (Node); without Node, "
            "commit the work tree by hand and run `cd mainrun && python3 train.py`, which is all `task train` does "
            "after those two steps.", "",
            requirements_note, ""]
    if cfg.precision == "bf16":
        out += [f"`device`, `precision` and `compile` are the ledger run's ({cfg.device}, {cfg.precision}, "
                f"{cfg.compile}): it trained on a CPU with native bf16 matmuls (AVX512-BF16 or AMX). On a GPU set "
                "`device = \"auto\"`; on an AVX2-only CPU, whose bf16 matmuls are emulated, set "
                "`precision = \"fp32\"` (and expect more time than the wall time above).", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the tree
TASKFILE = """\
# The original Mainrun task contract: `task train` runs the checkpoint and download steps, then
# mainrun/train.py; `task submit` checkpoints and uploads. Written by `python -m mainrun export --out`.
# In a Mainrun checkout the checkpoint and submit steps run its scripts/*.mjs through `npx zx` (Node); in a
# tree without them they say so and go on. The download step reads MAINRUN_DATA when it is set.
version: '3'

tasks:
  checkpoint:
    cmds:
      - |
        if [ -f scripts/checkpoint.mjs ]; then
          cd scripts && npx zx checkpoint.mjs
        else
          echo "checkpoint: no scripts/checkpoint.mjs in this tree (a Mainrun checkout has it); skipped"
        fi

  download:
    dir: mainrun
    cmds:
      - python3 -c "import train; train.download()"

  train:
    deps: [checkpoint, download]
    dir: mainrun
    cmds:
      - python3 train.py

  submit:
    deps: [checkpoint]
    cmds:
      - |
        if [ -f scripts/submit.mjs ]; then
          cd scripts && npx zx submit.mjs
        else
          echo "submit: no scripts/submit.mjs in this tree; copy it into a Mainrun checkout to submit" >&2
          exit 1
        fi
"""
GITIGNORE = "mainrun/data/\n__pycache__/\n"


def _write(path: Path, data: bytes | str) -> None:
    blob = data.encode() if isinstance(data, str) else data

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(blob)
        Path(tmp).chmod(0o644)
    atomic_write_bytes(path, write)


def _report_pdf() -> Path:
    pdf = repo_root() / "mainrun" / "report.pdf"
    if not pdf.exists():
        raise ExportError(f"{ledger.display_path(pdf)} does not exist: render it first (`make report`)")
    return pdf


def export_out(spec: str, out: Path, report: bool = True) -> Path:
    """Write the submission tree to `out` (replaced whole, never left half-written)."""
    recipe = resolve_recipe(spec)
    check_recipe(recipe)
    pins = our_pins()
    note = ("Requirements (`requirements.txt`): " + ", ".join(f"`{pins[k]}`" for k in SCRIPT_NEEDS)
            + ", the versions the workbench tested this script with. All four are in the original's "
              "`.devcontainer/requirements.txt`, so a Mainrun checkout needs nothing more; it pins torch 2.7.1, which "
              "has what the script uses (nn.RMSNorm and F.rms_norm came in torch 2.4; the script brings its own "
              "Muon), though the workbench did not run it there.")
    files: dict[str, bytes | str] = {
        "mainrun/train.py": render(recipe),
        "mainrun/SUBMISSION.md": submission_md(recipe, "out", note, report),
        "Taskfile.yml": TASKFILE,
        "requirements.txt": "".join(pins[k] + "\n" for k in SCRIPT_NEEDS),
        ".gitignore": GITIGNORE,
    }
    if report:
        files["mainrun/report.pdf"] = _report_pdf().read_bytes()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
    staging.chmod(0o755)
    try:
        for rel, data in files.items():
            _write(staging / rel, data)
        old = None
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export_into(spec: str, checkout: Path) -> list[Path]:
    """Turn a clone of the original repository into the submission; returns the files written."""
    checkout = Path(checkout)
    train = checkout / "mainrun" / "train.py"
    if not train.is_file():
        raise ExportError(f"{checkout} has no mainrun/train.py: --into takes a clone of MaincodeHQ/mainrun")
    recipe = resolve_recipe(spec)
    check_recipe(recipe)
    source = train.read_text()
    check_against_checkout(recipe, checkout_rules(source))
    script = render(recipe, evaluate_source(source), _imports_utils(ast.parse(source)))
    req = next((p for p in (checkout / ".devcontainer" / "requirements.txt", checkout / "requirements.txt")
                if p.is_file()), checkout / "requirements.txt")
    have = _requirement_names(req.read_text()) if req.exists() else set()
    pins = our_pins()
    added = [pins[k] for k in SCRIPT_NEEDS if k not in have]
    rel_req = req.relative_to(checkout)
    note = (f"Requirements: the script imports {', '.join(SCRIPT_NEEDS)} beyond the standard library; "
            + (f"`{rel_req}` lacked {', '.join(added)}, added by the export." if added else
               f"`{rel_req}` already lists them, so nothing was added. The workbench tested it with "
               + ", ".join(f"`{pins[k]}`" for k in SCRIPT_NEEDS) + " (the script uses nothing newer than torch 2.4 "
               "and brings its own Muon)."))
    written = []
    if added:
        text = req.read_text() if req.exists() else ""
        _write(req, text + ("" if not text or text.endswith("\n") else "\n") + "".join(a + "\n" for a in added))
        written.append(req)
    for rel, data in (("mainrun/train.py", script), ("mainrun/report.pdf", _report_pdf().read_bytes()),
                      ("mainrun/SUBMISSION.md", submission_md(recipe, "into", note))):
        _write(checkout / rel, data)
        written.append(checkout / rel)
    return written


def export_recommended(root: Path | None = None, report: bool = False) -> list[Path]:
    """results/submission/<name>/ for each recommended submission, from the committed ledger whatever
    MAINRUN_RESULTS says (no report.pdf: a copy of a 1.3 MB file that changes with every report would be
    committed twice more; --into and --out copy it)."""
    root = Path(root) if root else repo_root() / SUBMISSION_ROOT
    with ledger.results_override(repo_root() / "results"):
        return [export_out(h, root / name, report=report) for name, h in RECOMMENDED.items()]


def add_export_command(sub) -> None:
    def cmd_export(args) -> int:            # an ExportError is a ValueError: cli.main prints it as one line
        if args.recommended:
            if args.recipe or args.into:
                raise ExportError("--recommended takes no RECIPE and no --into (only --out, the folder of the trees)")
            for p in export_recommended(args.out):
                print(f"export: {ledger.display_path(p)}")
            return 0
        if not args.recipe or not (args.into or args.out):
            raise ExportError("give a RECIPE and --into CHECKOUT or --out DIR (or --recommended)")
        if args.into:
            for p in export_into(args.recipe, args.into):
                print(f"export: {p}")
        else:
            print(f"export: {export_out(args.recipe, args.out, report=not args.no_report)}")
        return 0

    e = sub.add_parser("export", help="a recipe as a Mainrun submission: the original's mainrun/train.py, "
                                      "report.pdf, SUBMISSION.md (and Taskfile.yml with --out)")
    e.add_argument("recipe", nargs="?", help=f"a preset ({', '.join(PRESETS)}) or a finished run of the full "
                                             f"ledger (name, folder name, hash or 4+ character hash prefix)")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--into", type=Path, help="a clone of MaincodeHQ/mainrun: its train.py is rewritten, its "
                                                 "evaluate() kept byte for byte")
    where.add_argument("--out", type=Path, help="a folder for the same tree without a checkout (replaced whole); "
                                                "with --recommended, the folder of the recommended trees")
    e.add_argument("--no-report", action="store_true", help="--out: leave report.pdf out")
    e.add_argument("--recommended", action="store_true",
                   help=f"write the recommended submissions ({', '.join(RECOMMENDED)}) under {SUBMISSION_ROOT}/")
    e.set_defaults(fn=cmd_export)
