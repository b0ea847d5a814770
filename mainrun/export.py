"""A recipe as a Mainrun submission: the original's single mainrun/train.py, run by `task train`.

    python -m mainrun export final --into ~/mainrun        # a clone of MaincodeHQ/mainrun becomes the submission
    python -m mainrun export final --out SUB               # the same tree, without a checkout
    python -m mainrun export --recommended                 # results/submission/<name>/ (make run)

The script is mainrun/submission_template.py, a hand-written, self-contained training script, with its
Hyperparameters dataclass filled with the recipe's values. With --into, its `evaluate()` is replaced by the
checkout's own, spliced through the AST and checked byte for byte: the rules forbid changing it. A recipe that
changes what the rules fix (epochs, seed, dataset, validation fraction), or uses a part the script does not
implement, is refused. The script and the package give bit-identical losses (tests/test_export.py). The tree's
prose, SUBMISSION.md (a Jinja2 template) and Taskfile.yml, is in mainrun/submission/.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import re
import shutil
import statistics
import symtable
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import jinja2

from . import ledger
from .config import (CODE_CHANGES, CODE_VERSION, HUB_DATASET, Config, code_version, latest_code_version,
                     make_config, recorded_config, rules_check)
from .ledger import atomic_write_bytes, repo_root
from .presets import PRESETS

TEMPLATE = Path(__file__).with_name("submission_template.py")
PROSE = Path(__file__).with_name("submission")
# The two recommended submissions, committed under results/submission/<name>/ by `make run`:
#  - final: the best single model whose 7 epochs fit the 60-minute budget on the baseline's CPU (2-core AVX2
#    AMD EPYC, fp32): 56.2 min. final2-final6 score lower on that CPU but took 61.8-86.8 min there.
#  - best: the lowest official loss of a CPU run that the exported script reproduces (a run of this code
#    version; final7's runs predate the ensemble-head fix of version 2, see check_recipe).
RECOMMENDED = {"final": "c691762915e5", "best": "7ca36c0c4295"}
SUBMISSION_ROOT = Path("results") / "submission"
# What the exported script imports beyond the standard library: all four are in the original's requirements.
SCRIPT_NEEDS = ("torch", "datasets", "tokenizers", "tqdm")
# Config fields that never reach the script: run bookkeeping (names, where the data and checkpoints live).
BOOKKEEPING = ("name", "profile", "preset", "data", "checkpoint_every", "code_version")
# Values of the script's fields that it does not implement. The original's evaluate() scores spans of
# batch_size x block_size, so a recipe must train at the official 64 x 128 to be scored as the package scores it.
LIMITS: dict[str, tuple] = {"init": ("normal", "scaled_residual"), "mlp": ("gelu", "relu2"),
                            "batch_size": (64,), "block_size": (128,)}
RULE_FIELDS = ("epochs", "seed", "num_titles", "val_frac")
# The original's evaluate() (MaincodeHQ/mainrun, mainrun/train.py: the same in every commit since the first,
# 086c373) as evaluate_fingerprint gives it: a checkout whose evaluate() differs is exported only when asked
# (--changed-evaluate), and its SUBMISSION.md says so.
ORIGINAL_EVALUATE = "7d9331e93bc8fecd7de46fb735e1f52d2aec919edaac85e969119e44343de975"
GITIGNORE = "mainrun/data/\n__pycache__/\n"
# An --out tree's list of the files export wrote there: a folder holding it is one that export may write into
# again (replacing those files only); export refuses any other folder that is not empty.
MARKER = ".mainrun-export"
MARKER_HEAD = ("# written by `python -m mainrun export`: the files below; the next export into this folder "
               "replaces them and touches nothing else\n")


class ExportError(ValueError):
    """A recipe or checkout that cannot be exported."""


@dataclasses.dataclass
class Recipe:
    label: str                       # how SUBMISSION.md names it
    config: Config
    run: dict | None = None          # the ledger run it reproduces: {'dir', 'config', 'summary', ...}
    seeds: list = dataclasses.field(default_factory=list)   # other seeds of the same recipe in the ledger


# ----------------------------------------------------------------------------- recipes
def _same_recipe(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> bool:
    """Equal in everything that changes a run's numbers; an `auto` device or precision matches any."""
    da, db = a.to_dict(), b.to_dict()
    skip = {*BOOKKEEPING, *ignore, *(k for k in ("device", "precision") if "auto" in (da[k], db[k]))}
    return all(da[k] == db[k] for k in da if k not in skip)


def resolve_recipe(spec: str) -> Recipe:
    """A preset name, or a finished run of the full ledger (its name, folder name, hash or a 4+ character hash
    prefix), as a config plus the ledger run it reproduces."""
    runs = [r for r in ledger.load_runs(ledger.results_root("full")) if r["status"] == "finished"]
    configs = {id(r): recorded_config(r["config"]) for r in runs}
    if spec in PRESETS:
        cfg, label = make_config("full", spec), f"preset `{spec}`"
        hits = [r for r in runs if _same_recipe(cfg, configs[id(r)])]
        # several devices may have run it: an official CPU run first (the budget is the CPU's), then by name
        run = min(hits, default=None, key=lambda r: (not r["summary"].get("official"),
                                                     r["config"]["device"] != "cpu", r["dir"].name))
    else:
        try:
            run = ledger.match_run(spec, runs, ledger.display_path(ledger.results_root("full")))
        except ledger.NoSuchRun as e:
            raise ExportError(f"recipe {spec!r} is neither a preset ({', '.join(PRESETS)}) nor one finished run "
                              f"(`python -m mainrun list` lists them): {e}") from None
        cfg, label = configs[id(run)], f"ledger run `{run['dir'].name}`"
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
        raise ExportError(f"{recipe.label} changes what the Mainrun rules fix: {'; '.join(reasons)}; a submission "
                          f"keeps epochs=7, seed=1337, num_titles=100000, val_frac=0.1 and the dataset")
    if code_version(cfg) < latest_code_version(cfg):
        raise ExportError(f"{recipe.label} ran under code version {code_version(cfg)}, before "
                          f"{CODE_CHANGES[code_version(cfg) + 1][0]}; the exported script is this code's "
                          f"(version {CODE_VERSION}) and would not reproduce its numbers: export a run of this "
                          f"code, or the preset")
    fields = template_defaults()
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
def _hyperparameters(tree: ast.Module) -> list[ast.AnnAssign]:
    """The fields of a module's Hyperparameters dataclass."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Hyperparameters":
            return [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    raise ExportError("no class Hyperparameters in the script")


def template_defaults() -> dict[str, Any]:
    """The template's Hyperparameters fields, in order, with their defaults."""
    return {n.target.id: ast.literal_eval(n.value) for n in _hyperparameters(ast.parse(TEMPLATE.read_text()))}


def field_comments() -> dict[str, str]:
    """The comment of each Hyperparameters field in the template (its line's trailing comment)."""
    text = TEMPLATE.read_text()
    lines = text.splitlines()
    fields = _hyperparameters(ast.parse(text))
    return {n.target.id: lines[n.lineno - 1].partition("  # ")[2].strip() for n in fields}


def _literal(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:_}"
    return repr(v)


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The recipe's value of every template field (the log file stays the original's)."""
    defaults = template_defaults()
    return {k: (defaults[k] if k == "log_file" else getattr(cfg, k)) for k in defaults}


def fill(template: str, values: dict[str, Any], headline: str) -> str:
    """The template with the Hyperparameters defaults replaced by `values`, comments kept in their column."""
    lines = template.splitlines(keepends=True)
    for n in _hyperparameters(ast.parse(template)):
        line = lines[n.lineno - 1]
        new = line[: n.value.col_offset] + _literal(values[n.target.id])
        tail = line[n.value.end_col_offset:]
        comment = tail.lstrip(" ")
        if comment.startswith("#"):             # keep the comment where it was, at least two spaces after
            tail = " " * max(2, len(line) - len(comment) - len(new)) + comment
        lines[n.lineno - 1] = new + tail
    text = "".join(lines)
    assert text.count("RECIPE_LINE") == 1
    return text.replace("RECIPE_LINE", headline)


def _main_evaluate(tree: ast.Module) -> ast.FunctionDef | None:
    """The function `evaluate` defined directly in the module's `main()`, as the original defines it."""
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    funcs = [f for m in mains for f in m.body if isinstance(f, ast.FunctionDef) and f.name == "evaluate"]
    return funcs[0] if funcs else None


def _lines(node: ast.FunctionDef) -> slice:
    """The whole lines of a function with its decorators."""
    return slice(min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1, node.end_lineno)


def evaluate_source(source: str, where: str = "the checkout's mainrun/train.py") -> str:
    """The exact text (whole lines) of `evaluate()` inside `main()`; refuses a file without one."""
    try:
        node = _main_evaluate(ast.parse(source))
    except SyntaxError as e:
        raise ExportError(f"{where} does not parse: {e}") from None
    if node is None:
        raise ExportError(f"{where} has no evaluate() defined inside main(), as the original has; the export "
                          f"keeps that function and needs to find it there")
    if ast.unparse(node.args):
        raise ExportError(f"{where}'s evaluate() takes arguments; the script calls it as the original does, "
                          f"evaluate()")
    return "".join(source.splitlines(keepends=True)[_lines(node)])


def syntax_text(node: Any) -> str:
    """A syntax tree as text: node types and their non-empty fields, no positions (so neither comments nor layout
    count), the same on every Python that parses the code alike (ast.dump's form changes between versions)."""
    if isinstance(node, ast.AST):
        fields = (f"{k}={syntax_text(v)}" for k, v in ast.iter_fields(node) if v is not None and v != [])
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return f"[{', '.join(map(syntax_text, node))}]"
    return repr(node)


def evaluate_fingerprint(evaluate_text: str) -> str:
    """sha256 of an evaluate()'s syntax tree (syntax_text): equal for the same code however it is laid out."""
    return hashlib.sha256(syntax_text(ast.parse(textwrap.dedent(evaluate_text))).encode()).hexdigest()


def splice_evaluate(script: str, evaluate_text: str) -> str:
    """The script with its evaluate() replaced by `evaluate_text` verbatim, checked to survive byte for byte
    and to find every name it uses in the script."""
    lines = script.splitlines(keepends=True)
    span = _lines(_main_evaluate(ast.parse(script)))
    indent = lambda s: len(s) - len(s.lstrip(" \t"))  # noqa: E731
    if indent(evaluate_text) != indent(lines[span.start]):
        raise ExportError(f"the checkout's evaluate() is indented by {indent(evaluate_text)} characters; the "
                          f"script's main() body by {indent(lines[span.start])}: it cannot be kept byte for byte")
    if not evaluate_text.endswith("\n"):
        evaluate_text += "\n"
    out = "".join(lines[: span.start]) + evaluate_text + "".join(lines[span.stop:])
    if evaluate_source(out, "the exported script") != evaluate_text:
        raise ExportError("the spliced evaluate() did not survive byte for byte")
    missing = sorted(unbound_names(out))
    if missing:
        raise ExportError(f"the checkout's evaluate() uses {', '.join(missing)}, which the exported script does "
                          f"not define")
    return out


def unbound_names(script: str) -> set[str]:
    """Names that main()'s evaluate() reads but neither main() nor the module (nor builtins) define."""
    top = symtable.symtable(script, "train.py", "exec")
    main = next(t for t in top.get_children() if t.get_name() == "main")
    ev = next(t for t in main.get_children() if t.get_name() == "evaluate")
    defined = lambda t: {s.get_name() for s in t.get_symbols() if s.is_assigned() or s.is_imported()}  # noqa: E731

    def globals_of(t) -> set[str]:              # in evaluate() and the functions and comprehensions inside it
        names = {s.get_name() for s in t.get_symbols() if s.is_global() and s.is_referenced()}
        return names.union(*map(globals_of, t.get_children()))
    return ({n for n in ev.get_frees() if n not in defined(main)}
            | {n for n in globals_of(ev) if n not in defined(top) and not hasattr(builtins, n)})


def render(recipe: Recipe, evaluate_text: str | None = None, import_utils: bool = False) -> str:
    """The exported train.py: the template filled with the recipe; the checkout's evaluate() if given; the
    original's `import utils` (its devcontainer check) first among the imports if the checkout has it."""
    headline = f"the {recipe.label} of the mainrun workbench."
    script = fill(TEMPLATE.read_text(), hyperparameters(recipe.config), headline)
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
def check_checkout(recipe: Recipe, source: str) -> bool:
    """Refuse a recipe that differs from what the checkout's train.py fixes by the rules: its Hyperparameters
    defaults for epochs, seed, num_titles and val_frac, and the hub dataset it loads. Returns whether it has
    the original's `import utils`."""
    tree = ast.parse(source)
    try:
        found = {n.target.id: ast.literal_eval(n.value) for n in _hyperparameters(tree) if n.value is not None}
    except ExportError:
        raise ExportError("the checkout's mainrun/train.py has no Hyperparameters dataclass; is it a clone of "
                          "MaincodeHQ/mainrun?") from None
    missing = [k for k in RULE_FIELDS if k not in found]
    if missing:
        raise ExportError(f"the checkout's Hyperparameters lacks {', '.join(missing)}; is it a clone of "
                          f"MaincodeHQ/mainrun?")
    cfg = recipe.config
    differ = [f"{k}={getattr(cfg, k)!r} (the checkout fixes {found[k]!r})" for k in RULE_FIELDS
              if getattr(cfg, k) != found[k]]
    datasets = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and c.args
                and getattr(c.func, "id", getattr(c.func, "attr", None)) == "load_dataset"
                and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)}
    if datasets and HUB_DATASET not in datasets:
        differ.append(f"dataset {HUB_DATASET} (the checkout loads {', '.join(sorted(datasets))})")
    if differ:
        raise ExportError(f"{recipe.label} differs from what the checkout's train.py fixes by the rules: "
                          f"{'; '.join(differ)}")
    return any(isinstance(n, ast.Import) and any(a.name == "utils" for a in n.names) for n in tree.body)


def _requirements(text: str) -> dict[str, str]:
    """Each requirement line of a requirements file, by its package's normalised name."""
    out = {}
    for line in text.splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec and not spec.startswith("-"):
            out[re.split(r"[\s\[=<>!~;]", spec, maxsplit=1)[0].lower().replace("_", "-")] = spec
    return out


def our_pins() -> dict[str, str]:
    """This repository's requirement line for each package the script imports."""
    pins = _requirements((repo_root() / "requirements.txt").read_text())
    return {k: pins.get(k, k) for k in SCRIPT_NEEDS}


# ----------------------------------------------------------------------------- SUBMISSION.md
def submission_md(recipe: Recipe, mode: str, report: bool = True, req: Path | None = None,
                  added: list[str] = (), changed_evaluate: bool = False) -> str:
    """SUBMISSION.md (mainrun/submission/SUBMISSION.md): what the script reproduces, what it changes against
    the original, what it measured. mode: "out", or "into" a checkout whose requirements file `req` lacked
    `added`."""
    values, defaults, comments = hyperparameters(recipe.config), template_defaults(), field_comments()
    changes = [(k, _literal(defaults[k]), _literal(v), comments[k]) for k, v in values.items() if v != defaults[k]]
    ctx = dict(label=recipe.label, mode=mode, report=report, cfg=recipe.config, run=recipe.run, changes=changes,
               needs=SCRIPT_NEEDS, pins=list(our_pins().values()), req=req, added=added,
               changed_evaluate=changed_evaluate)
    if recipe.run is not None:
        s = recipe.run["summary"]
        base = resolve_recipe("baseline").run              # the baseline's ledger run, picked as a preset's
        seeds = [(recorded_config(r["config"]).rng_seed, r["summary"]["final_val_loss"]) for r in recipe.seeds]
        ctx.update(s=s, hw=s.get("hardware", {}), commit=(s.get("git_commit") or "")[:12] or "not recorded",
                   src=(ledger.read_json(recipe.run["dir"] / "config.json") or {}).get("data_source", {}),
                   base=base if base and base["summary"].get("final_val_loss") else None, seeds=seeds)
        if len(seeds) > 1:
            losses = [v for _, v in seeds]
            ctx.update(seed_mean=statistics.mean(losses), seed_sd=statistics.stdev(losses))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(PROSE), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("SUBMISSION.md").render(ctx)


# ----------------------------------------------------------------------------- the tree
def _report_pdf() -> bytes:
    pdf = repo_root() / "mainrun" / "report.pdf"
    if not pdf.exists():
        raise ExportError(f"{ledger.display_path(pdf)} does not exist: render it first (`make report`)")
    return pdf.read_bytes()


def export_out(spec: str, out: Path, report: bool = True) -> Path:
    """Write the submission tree to `out`: a new or empty folder (filled beside it, then renamed into place, never
    left half-written), or one an earlier export wrote (its MARKER lists what it wrote: those files are replaced,
    nothing else there is touched). Any other folder is refused: export deletes nothing it did not write."""
    recipe = resolve_recipe(spec)
    check_recipe(recipe)
    out = Path(out)
    before = written_before(out)
    files = {"mainrun/train.py": render(recipe),
             "mainrun/SUBMISSION.md": submission_md(recipe, "out", report),
             "Taskfile.yml": (PROSE / "Taskfile.yml").read_text(),
             "requirements.txt": "".join(pin + "\n" for pin in our_pins().values()),
             ".gitignore": GITIGNORE}
    if report:
        files["mainrun/report.pdf"] = _report_pdf()
    files[MARKER] = MARKER_HEAD + "".join(rel + "\n" for rel in files)
    blob = lambda data: data.encode() if isinstance(data, str) else data  # noqa: E731
    if before is not None:                  # one export wrote: the marker last, then what it no longer writes
        for rel, data in files.items():
            atomic_write_bytes(out / rel, lambda tmp, b=blob(data): Path(tmp).write_bytes(b))
        for rel in set(before) - set(files):
            if rel == "mainrun/report.pdf":      # the one file an export may leave out (--no-report)
                (out / rel).unlink(missing_ok=True)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
    staging.chmod(0o755)
    try:
        for rel, data in files.items():
            (staging / rel).parent.mkdir(exist_ok=True)
            (staging / rel).write_bytes(blob(data))
        staging.rename(out)                 # onto a missing or empty folder only (POSIX rename)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def written_before(out: Path) -> list[str] | None:
    """The files an earlier export wrote to `out` (its MARKER), None for a new or empty folder; refuses any
    other path."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder: give a new or empty folder, or one that an "
                          f"earlier export wrote")
    if (out / MARKER).is_file():
        return [line for line in (out / MARKER).read_text().splitlines() if line and not line.startswith("#")]
    if any(out.iterdir()):
        raise ExportError(f"--out {out} holds files that export did not write (it has no {MARKER}): give a new "
                          f"or empty folder, or one that an earlier export wrote; export deletes nothing it did "
                          f"not write")
    return None


def export_into(spec: str, checkout: Path, changed_evaluate: bool = False) -> list[Path]:
    """Turn a clone of the original repository into the submission; returns the files written. A checkout whose
    evaluate() is not the original's (ORIGINAL_EVALUATE) is refused unless changed_evaluate=True, which
    SUBMISSION.md then states."""
    checkout = Path(checkout)
    train = checkout / "mainrun" / "train.py"
    if not train.is_file():
        raise ExportError(f"{checkout} has no mainrun/train.py: --into takes a clone of MaincodeHQ/mainrun")
    recipe = resolve_recipe(spec)
    check_recipe(recipe)
    source = train.read_text()
    evaluate_text = evaluate_source(source)
    script = render(recipe, evaluate_text, check_checkout(recipe, source))
    changed = evaluate_fingerprint(evaluate_text) != ORIGINAL_EVALUATE
    if changed and not changed_evaluate:
        raise ExportError(f"{train}: its evaluate() is not the original's (its syntax tree differs from that of "
                          f"MaincodeHQ/mainrun; comments and layout aside) and the rules forbid changing it: restore "
                          f"it (git checkout mainrun/train.py), or add --changed-evaluate to export it anyway, which "
                          f"SUBMISSION.md then states")
    req = next((p for p in (checkout / ".devcontainer" / "requirements.txt", checkout / "requirements.txt")
                if p.is_file()), checkout / "requirements.txt")
    text = req.read_text() if req.exists() else ""
    added = [pin for k, pin in our_pins().items() if k not in _requirements(text)]
    files = {"mainrun/train.py": script, "mainrun/report.pdf": _report_pdf(),
             "mainrun/SUBMISSION.md": submission_md(recipe, "into", req=req.relative_to(checkout), added=added,
                                                     changed_evaluate=changed)}
    if added:
        files[req.relative_to(checkout)] = text + ("" if not text or text.endswith("\n") else "\n") \
            + "".join(a + "\n" for a in added)
    for rel, data in files.items():
        blob = data.encode() if isinstance(data, str) else data
        atomic_write_bytes(checkout / rel, lambda tmp: Path(tmp).write_bytes(blob))
    return [checkout / rel for rel in files]


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
                raise ExportError("--recommended takes no RECIPE and no --into (only --out, the folder of the "
                                  "trees)")
            for p in export_recommended(args.out):
                print(f"export: {ledger.display_path(p)}")
            return 0
        if not args.recipe or not (args.into or args.out):
            raise ExportError("give a RECIPE and --into CHECKOUT or --out DIR (or --recommended)")
        if args.changed_evaluate and not args.into:
            raise ExportError("--changed-evaluate goes with --into (a checkout's evaluate() is kept only there)")
        if args.into:
            for p in export_into(args.recipe, args.into, changed_evaluate=args.changed_evaluate):
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
    where.add_argument("--out", type=Path, help="a folder for the same tree without a checkout: new, empty, or "
                                                "one an earlier export wrote (its files are replaced, nothing "
                                                "else); with --recommended, the folder of the recommended trees")
    e.add_argument("--no-report", action="store_true", help="--out: leave report.pdf out")
    e.add_argument("--changed-evaluate", action="store_true",
                   help="--into: export a checkout whose evaluate() is not the original's (refused otherwise); "
                        "SUBMISSION.md says so")
    e.add_argument("--recommended", action="store_true",
                   help=f"write the recommended submissions ({', '.join(RECOMMENDED)}) under {SUBMISSION_ROOT}/")
    e.set_defaults(fn=cmd_export)
