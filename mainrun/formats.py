"""How numbers are written, in one place: losses, bits/char, ratios, times, counts, millions of
parameters, and numpy/NaN values turned into plain JSON ones. Shared by `results`, `verdicts`,
`fragments` and `report_inputs`; imports nothing of mainrun."""
from __future__ import annotations

import math
from typing import Any


def fmt_loss(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{x:.4f}"


def fmt_bpc(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{x:.3f}"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{x:.3f}"


def fmt_time(s: float | None) -> str:
    if s is None or _nan(s):
        return "n/a"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def fmt_int(x: float | None) -> str:
    return "n/a" if x is None or _nan(x) else f"{int(round(x)):,}"


def _millions(n: float) -> str:
    return f"{n / 1e6:.1f}M"


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _py(v: Any) -> Any:
    """numpy scalars and NaN -> plain JSON values."""
    v = v.item() if hasattr(v, "item") else v
    return None if _nan(v) else v
