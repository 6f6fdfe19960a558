"""Reading a number out of a cell of a user's measurement table (CSV read as text or numbers)."""

from __future__ import annotations

import numpy as np


def number(v) -> float | None:
    """The cell as a finite number, or None (blank, text, NaN or infinite)."""
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x if np.isfinite(x) else None
