"""Render report/report.qmd to PDF from the analysis outputs; never trains. `python -m mainrun report --profile
full` writes mainrun/report.pdf, other profiles <results>/report-<profile>.pdf. With quarto on PATH, `quarto
render` (typst); else pandoc (pypandoc-binary) to typst and the `typst` wheel to PDF: the sources keep to what
both understand (`{{< include >}}` on its own line, `#fig-`/`#tbl-` labels, `@fig-` cross-references)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import yaml

from . import ledger
from .ledger import repo_root
from .tables import analysis_dir

INCLUDE = re.compile(r"^\{\{<\s*include\s+(\S+)\s*>\}\}[ \t]*$", re.M)
# a number in the prose: {{< meta v.KEY.SUBKEY >}}, from _generated/variables.yml (Quarto reads the same file
# through the document's metadata-files; the pandoc path substitutes it here)
META = re.compile(r"\{\{<\s*meta\s+v\.([\w.-]+)\s*>\}\}")
PRIME = re.compile(r"(?<=[0-9])'(?=s\b)")   # final4's: an apostrophe, which typst's smart quotes set as a prime
# pandoc writes a cross-reference to a figure/table label as a citation; typst wants @label
CITE_REF = re.compile(r'#cite\(<((?:fig|tbl)-[^>]+)>, form: "prose"\)')


def report_dir() -> Path:
    return repo_root() / "report"


def output_path(profile: str) -> Path:
    """full -> mainrun/report.pdf (the submission's path); other profiles beside their ledger."""
    if profile == "full":
        return repo_root() / "mainrun" / "report.pdf"
    return ledger.results_root(profile) / f"report-{profile}.pdf"


def stage_inputs(profile: str, engine: str) -> Path:
    """Copy the profile's analysis outputs to report/_generated/, where report.qmd includes them."""
    src = analysis_dir(profile)
    if not (src / "numbers.json").exists():
        raise FileNotFoundError(f"{src}/numbers.json does not exist: run notebooks/05_analysis.ipynb for profile "
                                f"{profile!r} first (make run PROFILE={profile})")
    dst = report_dir() / "_generated"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    (dst / "render.md").write_text(f"This PDF was rendered by {engine} from the `{profile}` ledger at "
                                   f"`{ledger.display_path(ledger.results_root(profile))}`.\n")
    return dst


def expand_includes(text: str, base: Path, depth: int = 0) -> str:
    """Quarto's include shortcode, done by hand for the pandoc path (paths relative to `base`)."""
    if depth > 5:
        raise RecursionError("includes nested more than 5 deep")
    return INCLUDE.sub(lambda m: expand_includes((base / m.group(1)).read_text(), base, depth + 1).rstrip("\n"),
                       text)


MISSING = "[not in this ledger]"


def expand_variables(text: str, variables: dict, strict: bool = True) -> str:
    """Quarto's meta shortcode for the numbers in the prose, done by hand for the pandoc path. A key the
    variables lack is an error naming it when `strict` (the full profile); otherwise (a proxy or smoke ledger
    lacks the GPU studies) it reads MISSING."""
    def value(m: re.Match) -> str:
        node = variables
        for part in m.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                if not strict:
                    return MISSING
                raise KeyError(f"report.qmd quotes v.{m.group(1)}, which variables.yml does not hold "
                               f"(written by report_inputs.report_variables)")
            node = node[part]
        return str(node)
    return META.sub(value, text)


def dangling_refs(typ: str, strict: bool) -> str:
    """A cross-reference to a figure or table the ledger did not give reads MISSING, or under `strict` is an
    error naming the labels."""
    defined = set(re.findall(r"<((?:fig|tbl)-[\w-]+)>", typ))
    dangling = sorted({m for m in re.findall(r"@((?:fig|tbl)-[\w-]+)", typ)} - defined)
    if dangling and strict:
        raise KeyError(f"report.qmd refers to {', '.join(dangling)}, which the generated inputs do not define")
    for label in dangling:
        typ = re.sub(rf"@{re.escape(label)}\b", lambda m: MISSING.replace("[", "\\[").replace("]", "\\]"), typ)
    return typ


def ledger_timestamp(profile: str) -> int | None:
    """The PDF's date: SOURCE_DATE_EPOCH, else the newest `finished_at` of the profile's runs (the same
    ledger renders to the same bytes on any machine)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    stamps = [r["summary"]["finished_at"] for r in ledger.load_runs(ledger.results_root(profile))
              if r["summary"] and r["summary"].get("finished_at")]
    return int(datetime.fromisoformat(max(stamps)).timestamp()) if stamps else None


def render_pandoc_typst(qmd: Path, pdf: Path, timestamp: int | None = None, strict: bool = True) -> Path:
    import pypandoc
    import typst

    md = expand_includes(qmd.read_text(), qmd.parent)
    variables = qmd.parent / "_generated" / "variables.yml"
    md = expand_variables(md, yaml.safe_load(variables.read_text())["v"] if variables.exists() else {}, strict)
    typ = pypandoc.convert_text(md, "typst", format="markdown", extra_args=[
        "--standalone", f"--include-in-header={qmd.parent / 'header.typ'}", "--columns=200"])
    typ = CITE_REF.sub(r"@\1", typ)
    typ = PRIME.sub("\u2019", typ)
    typ = dangling_refs(typ, strict)
    typ_path = qmd.with_suffix(".typ")
    typ_path.write_text(typ)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    typst.compile(str(typ_path), output=str(pdf), root=str(qmd.parent), timestamp=timestamp)
    return pdf


def render_quarto(qmd: Path, pdf: Path, timestamp: int | None = None) -> Path:
    env = {**os.environ, **({"SOURCE_DATE_EPOCH": str(timestamp)} if timestamp is not None else {})}
    subprocess.run(["quarto", "render", str(qmd), "--to", "typst"], cwd=repo_root(), check=True, env=env)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(qmd.with_suffix(".pdf")), pdf)
    return pdf


def engine_name(engine: str = "auto") -> str:
    if engine == "auto":
        engine = "quarto" if shutil.which("quarto") else "pandoc"
    if engine == "quarto":
        return "quarto"
    import pypandoc
    import typst

    return f"pandoc {pypandoc.get_pandoc_version()} and typst (Python package {typst.__version__})"


def render(profile: str, output: Path | None = None, engine: str = "auto") -> Path:
    """Stage the analysis outputs and render report.qmd to `output` (default: `output_path`)."""
    name = engine_name(engine)
    stage_inputs(profile, name)
    qmd = report_dir() / "report.qmd"
    pdf = Path(output) if output else output_path(profile)
    if name == "quarto":
        return render_quarto(qmd, pdf, ledger_timestamp(profile))
    return render_pandoc_typst(qmd, pdf, ledger_timestamp(profile), strict=profile == "full")
