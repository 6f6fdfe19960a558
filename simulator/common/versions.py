"""Ordering of framework version strings."""

from __future__ import annotations

import re


def version_key(v: str) -> tuple:
    """Order versions like 0.9.0 < 0.14.0 < 1.2.0rc5 < 1.3.0 (numbers numerically, tags after)."""
    return tuple((int(x), "") if x.isdigit() else (-1, x) for x in re.findall(r"\d+|[a-z]+", v.lower()))


def is_dated(v) -> bool:
    """Whether a version string is a build date (YYYY-MM-DD), not a release number."""
    return v is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(v)) is not None
