"""Ordering of framework version strings."""

from __future__ import annotations

import re


def version_key(v: str) -> tuple:
    """Order versions like 0.9.0 < 0.14.0 < 1.2.0rc5 < 1.3.0 (numbers numerically, tags after)."""
    return tuple((int(x), "") if x.isdigit() else (-1, x) for x in re.findall(r"\d+|[a-z]+", v.lower()))
