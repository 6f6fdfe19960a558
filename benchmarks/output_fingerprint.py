"""Fingerprint every output of the bundled scenarios, sweeps, plans and validation cases.

Runs each command of the project's public entry point (``python -m simulator``) on the bundled
inputs into a temporary folder and prints one sha256 per output file, so two source trees can be
compared byte for byte (e.g. before and after a refactor that must not change a number):

    python benchmarks/output_fingerprint.py --json before.json            # in the old tree
    python benchmarks/output_fingerprint.py --json after.json --against before.json

``--tree DIR`` runs another checkout's code (its ``simulator`` package comes first on the path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(tree: Path) -> dict[str, list[str]]:
    """Output-folder name -> moesd arguments (the bundled inputs, default settings)."""
    out = {}
    for sc in sorted((tree / "workloads" / "scenarios").glob("*.yaml")):
        out[f"simulate_{sc.stem}"] = ["simulate", str(sc), "--quiet"]
    out["sweep_quickstart"] = ["sweep", str(tree / "workloads/scenarios/quickstart.yaml"), "--quiet"]
    out["sweep_mixtral_eagle"] = ["sweep", str(tree / "workloads/scenarios/mixtral_eagle.yaml"), "--quiet",
                                  "--batch-sizes", "1,4,16,64", "--num-speculative-tokens", "1..3"]
    for plan in sorted((tree / "workloads" / "plans").glob("*.yaml")):
        out[f"plan_{plan.stem}"] = ["plan", str(plan), "--quiet"]
    out["validate"] = ["validate", "--quiet"]
    return out


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=str(ROOT), help="source tree whose code runs (default: this one)")
    ap.add_argument("--only", default="", help="comma list of output names to run (default: all)")
    ap.add_argument("--json", help="write the fingerprints here")
    ap.add_argument("--against", help="fingerprints of another tree: print every difference, exit 1 if any")
    args = ap.parse_args()
    tree = Path(args.tree).resolve()
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    want = {s for s in args.only.split(",") if s}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(tree).items():
            if want and name not in want:
                continue
            out = Path(tmp) / name
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "simulator", *argv, "--out", str(out)]
            if argv[0] in ("sweep", "plan", "validate"):
                cmd += ["--cache-dir", str(Path(tmp) / f"cache_{name}")]
            proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
            if proc.returncode:
                print(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 2
            # the console table is an output too (paths replaced: they differ between runs)
            (out / "stdout.txt").write_text(proc.stdout.replace(str(out), "<out>").replace(str(tree), "<tree>"))
            result[name] = fingerprint(out)
            print(f"{name}: {len(result[name])} files, {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.against:
        ref = json.loads(Path(args.against).read_text())
        diffs = [f"{n}/{f}: {ref.get(n, {}).get(f)} -> {result.get(n, {}).get(f)}"
                 for n in sorted(set(ref) & set(result))
                 for f in sorted(set(ref[n]) | set(result[n])) if ref[n].get(f) != result[n].get(f)]
        print("\n".join(diffs) if diffs else f"identical: {sum(len(v) for v in result.values())} files "
              f"in {len(result)} outputs")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
