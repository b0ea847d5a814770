"""The rendered report reads as a document (issue 35): no figure taller than the page's text block, and no study
name or code identifier where a word belongs, in its text or in the forest plot's labels. Reads the committed
mainrun/report.pdf and ledger; trains and renders nothing."""
from __future__ import annotations

import re

import pytest
import yaml
from pypdf import PdfReader

from mainrun.data import repo_root

PDF = repo_root() / "mainrun" / "report.pdf"
STUDY = re.compile(r"\b\w*(?:gpu\d+_|\b\d\d_)\w*")             # gpu14_screen4, 14_final7, 04_sweeps
IDENT = re.compile(r"\b[a-z][a-z0-9]*_[a-z0-9_]+\b")           # d_model, embed_lr0.02, init=scaled_residual


def text_block_height_pt(page) -> float:
    """The page's height less report.qmd's top and bottom margins (in cm), in points."""
    front = yaml.safe_load((repo_root() / "report" / "report.qmd").read_text().split("---")[1])
    margin_cm = float(str(front["margin"]["y"]).removesuffix("cm"))
    return float(page.mediabox.height) - 2 * margin_cm / 2.54 * 72


def image_heights(pdf) -> list[tuple[int, float, float]]:
    """(page, drawn height, text block height) in points of every image the PDF draws (its transformation
    matrix when the image is painted)."""
    out = []
    for i, page in enumerate(PdfReader(pdf).pages, start=1):
        block = text_block_height_pt(page)

        def visit(op, args, cm, tm, page_no=i, block=block):
            if op == b"Do":
                out.append((page_no, abs(cm[3]), block))
        page.extract_text(visitor_operand_before=visit)
    return out


def pdf_text(pdf) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(pdf).pages)


def test_the_geometry_check_sees_every_figure():
    """The check is not vacuous: it finds the report's figures at their drawn sizes, against A4 less two 2 cm
    margins."""
    heights = image_heights(PDF)
    assert len(heights) >= 10 and all(h > 50 for _, h, _ in heights)
    assert heights[0][2] == pytest.approx(841.89 - 2 * 2 / 2.54 * 72, abs=0.1)


def test_no_figure_is_taller_than_the_text_block():
    too_tall = [(page, round(h), round(block)) for page, h, block in image_heights(PDF) if h > block]
    assert not too_tall, f"figures taller than the text block (page, height pt, block pt): {too_tall}"


def test_the_text_names_no_study_and_no_code_identifier():
    text = pdf_text(PDF)
    assert not sorted(set(STUDY.findall(text))), "study names in the report's text"
    assert not sorted(set(IDENT.findall(text))), "code identifiers in the report's text"


def test_the_patterns_catch_what_they_are_for():
    assert STUDY.findall("the screen gpu14_screen4 and 14_final7 and 04_sweeps") == [
        "gpu14_screen4", "14_final7", "04_sweeps"]
    assert IDENT.findall("d_model=192, embed_lr0.02, init=scaled_residual; a width of 192") == [
        "d_model", "embed_lr0", "scaled_residual"]
    assert not STUDY.findall("final4 over 3 seeds, 2016 to 2020, round 4") and not IDENT.findall("final4 d192")


@pytest.fixture(scope="module")
def full_findings():
    from mainrun.report_inputs import read_study_roles
    from mainrun.report_text import findings
    from mainrun.tables import load_results, read_studies

    return findings(read_studies("full"), load_results("full"), read_study_roles())


def test_the_forest_plot_labels_changes_in_words(full_findings):
    """The forest plot's labels come from the changes' words and rounds (studies.yml: words), never a study
    name or a config field's name."""
    import matplotlib
    matplotlib.use("Agg")
    from mainrun import plots

    gpu = full_findings[full_findings["device"] == "cuda"].assign(scale="at full scale on the GPU")
    fig = plots.forest(gpu)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert not [x for x in labels if STUDY.findall(x) or IDENT.findall(x)], labels
    assert len(labels) == 24   # the 12 best and 12 worst
    assert "3 models averaged (round 5, 3 seeds)" in labels
