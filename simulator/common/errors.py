"""One error type for bad user input: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input, reported as ``<source>: <field>: <message>`` on one line."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        parts = [p for p in (source, field) if p]
        super().__init__(": ".join(parts + [message]))


def pydantic_error(exc, source: str) -> ConfigError:
    """Turn the first error of a pydantic ValidationError into a one-line ConfigError."""
    err = exc.errors()[0]
    # a union's member tags ("float", "literal['inf']") are pydantic's, not the user's field
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
    loc = [p for p in loc if p not in ("float", "int", "str", "bool", "dict", "list") and not p.startswith(("literal[", "function-"))]
    field = ".".join(loc) or None
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    if err.get("type") == "literal_error" and "expected" in err.get("ctx", {}):
        msg = f"must be one of {err['ctx']['expected']}"
    return ConfigError(msg, source=source, field=field)
