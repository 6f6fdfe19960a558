"""Framework version strings: what a scenario may give, and their order."""

from __future__ import annotations

import re


def version_key(v: str) -> tuple:
    """Order versions like 0.9.0 < 0.14.0 < 1.2.0rc5 < 1.3.0 (numbers numerically, tags after)."""
    return tuple((int(x), "") if x.isdigit() else (-1, x) for x in re.findall(r"\d+|[a-z]+", v.lower()))


def release_distance(a: str, b: str) -> tuple:
    """How far apart two releases are, major first: (|major|, |minor|, |patch|) of the difference
    (0.18.0 is (0, 1, 0) from 0.19.0 and (0, 4, 0) from 0.14.0); compared as a tuple."""
    na, nb = ([int(x) for x in re.findall(r"\d+", v)[:3]] for v in (a, b))
    na, nb = (n + [0] * (3 - len(n)) for n in (na, nb))
    return tuple(abs(x - y) for x, y in zip(na, nb))


def is_dated(v) -> bool:
    """Whether a version string is a build date (YYYY-MM-DD), not a release number."""
    return v is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(v)) is not None


# a build with no release number: a nightly or a branch head, priced as the newest release
DEV_BUILD = re.compile(r"(nightly|main|master|dev|latest)([-_.+/][\w.+/-]*)?", re.IGNORECASE)


def normalise(v: str) -> str:
    """A framework version as the step-model and kernel tables read it: a release number (a leading
    ``v``, as in Docker tags, dropped), a build date (YYYY-MM-DD) or a dev build's name; anything
    else is an error rather than a silent "newest"."""
    s = v.strip()
    if re.match(r"[vV]\d", s):
        s = s[1:]
    if re.fullmatch(r"\d+(\.\d+)*[\w.+-]*", s) or DEV_BUILD.fullmatch(s):
        return s
    raise ValueError(f"{v!r} is not a version: give a release (0.8.1, v0.11.2, 1.2.0rc6.post2), "
                     "a build date (YYYY-MM-DD) or a nightly/main build name (priced as the newest)")
