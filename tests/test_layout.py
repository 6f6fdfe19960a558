"""The package tree is the architecture: each layer imports only from the layers below it."""

import ast
from pathlib import Path

import simulator

PKG = Path(simulator.__file__).parent
# lowest first; a module may import from its own layer and the ones before it
LAYERS = ["common", "config", "cost", "serving", "profiler", "analysis", "reports", "commands"]


def _imports(path: Path, root: Path = PKG):
    """(line, imported layer) of every intra-package import, lazy ones included."""
    rel = path.relative_to(root)
    depth = len(rel.parts) - 1
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(rel.parts[:-1])[:max(depth - node.level + 1, 0)]
                target = [p for p in parts if p] + (node.module.split(".") if node.module else [])
                names = [target[0]] if target else [a.name for a in node.names]
            elif node.module and node.module.startswith("simulator."):
                names = [node.module.split(".")[1]]
            else:
                continue
            for n in names:
                yield node.lineno, n


def test_no_module_imports_from_a_layer_above():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if len(rel.parts) == 1:        # __init__ / __main__ (the entry point) sit above everything
            continue
        layer = rel.parts[0]
        assert layer in LAYERS, f"{rel}: folder {layer!r} is not a known layer"
        for line, target in _imports(path):
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                bad.append(f"{rel}:{line} imports from {target}")
    assert not bad, "\n".join(bad)


def test_modules_stay_small_or_say_why():
    long = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
            if len(p.read_text().splitlines()) > 400 and "over 400 lines" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not long, f"modules over 400 lines without a stated reason: {long}"


def test_layer_check_sees_upward_imports(tmp_path):
    """The check itself: relative, lazy and absolute imports of a higher layer are all found."""
    (tmp_path / "cost").mkdir()
    probe = tmp_path / "cost" / "x.py"
    probe.write_text("from ..serving.engine import run\nfrom . import kernels\n\n\ndef f():\n"
                     "    from ..analysis import plan\n    from simulator.reports.page import write\n")
    assert list(_imports(probe, tmp_path)) == [(1, "serving"), (2, "cost"), (6, "analysis"), (7, "reports")]
