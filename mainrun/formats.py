"""How numbers are written, in one place: losses, bits/char, ratios, times, counts, millions of
parameters, numpy/NaN values turned into plain JSON ones, and markdown tables. Shared by `tables`, `stats`,
`report_text` and `report_inputs`; imports nothing of mainrun."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _or_na(write):
    """`write` for a number, "n/a" for None and NaN."""
    return lambda x: "n/a" if x is None or is_nan(x) else write(x)


fmt_loss = _or_na("{:.4f}".format)
fmt_bpc = _or_na("{:.3f}".format)
fmt_ratio = _or_na("{:.3f}".format)
fmt_time = _or_na(lambda s: f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min")
fmt_int = _or_na(lambda x: f"{int(round(x)):,}")


def millions(n: float) -> str:
    """A count in millions, e.g. 12.3M."""
    return f"{n / 1e6:.1f}M"


def is_nan(x: Any) -> bool:
    """Whether x is a float NaN (numpy floats included)."""
    return isinstance(x, float) and math.isnan(x)


# Significant digits of every float written into a committed analysis file. Two hosts (an AVX2-only CPU and
# one with AVX-512, say) sum the same losses in a different order and disagree in the last 2-3 digits of a
# double; six significant digits are far more than any result means (seed spreads are ~1e-4 of a loss) and
# leave the files byte-identical on every host (tests/test_hosts.py perturbs the ledger to prove it).
SIG_DIGITS = 6


def rounded(obj: Any, sig: int = SIG_DIGITS) -> Any:
    """`obj` (JSON-like: dicts, lists, numbers, strings) with every float rounded to `sig` significant digits;
    numpy scalars become plain values and NaN becomes None."""
    if isinstance(obj, dict):
        return {k: rounded(v, sig) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, sig) for v in obj]
    obj = plain(obj)
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.{sig}g}")
    return obj


def plain(v: Any) -> Any:
    """numpy scalars and NaN -> plain JSON values."""
    v = v.item() if hasattr(v, "item") else v
    return None if is_nan(v) else v


def md_table(df: pd.DataFrame, align: str = "", min_dashes: int = 8) -> str:
    """A pandoc/Quarto pipe table; align is one of l/r per column (default: l then r)."""
    cols = list(df.columns)
    align = align or "l" + "r" * (len(cols) - 1)
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    # dash counts set relative widths when a table is wider than the page: give short columns room
    sep = ["-" * max(min_dashes, w - 1) + ":" if a == "r" else ":" + "-" * max(min_dashes, w - 1)
           for w, a in zip(widths, align)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"
