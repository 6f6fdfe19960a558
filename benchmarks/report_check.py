"""Render every report type in headless Chromium and fail on console errors or network requests.

Makes a small simulate, sweep, plan, validate and (with ../shared) calibration report, opens each
``report.html`` in Debian's ``chromium`` through the DevTools protocol (over a pipe: no port, no
extra package), waits for the page to load and its Plotly figures to draw, and lists every console
error, uncaught exception and request to anything but the file itself. Exit 1 if any.

    apt-get install chromium        # once
    python benchmarks/report_check.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Browser:
    """Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, exe: str):
        self.to_r, self.to_w = os.pipe()
        self.from_r, self.from_w = os.pipe()
        os.set_inheritable(self.to_r, True)
        os.set_inheritable(self.from_w, True)
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--user-data-dir=" + tempfile.mkdtemp(prefix="moesd-chromium-"), "about:blank"]
        # the shell puts our pipe ends on fds 3 and 4, where Chromium expects them
        self.proc = subprocess.Popen(["sh", "-c", f'exec "$@" 3<&{self.to_r} 4>&{self.from_w}', "sh", *args],
                                     pass_fds=(self.to_r, self.from_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(self.to_r)
        os.close(self.from_w)
        self.buf = b""
        self.next_id = 0
        self.events: list = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def _read(self) -> dict:
        while b"\0" not in self.buf:
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def drain(self, seconds: float) -> None:
        import select
        end = time.time() + seconds
        while time.time() < end:
            r, _, _ = select.select([self.from_r], [], [], max(0.0, end - time.time()))
            if not r:
                break
            self.events.append(self._read())

    def check(self, url: str, settle_s: float = 3.0) -> list[str]:
        """Problems seen while loading ``url``: console errors, exceptions, non-local requests."""
        self.events = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.drain(settle_s)
        figs = self.send("Runtime.evaluate", {"expression": "document.querySelectorAll('.js-plotly-plot').length",
                                               "returnByValue": True}, session=session)
        self.drain(0.5)
        problems = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                problems.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                problems.append("console error: " + " ".join(str(a.get("value", a.get("description")))
                                                              for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                problems.append(f"log error: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
            elif m == "Network.requestWillBeSent":
                req = p["request"]["url"]
                if not req.startswith(("file://", "data:", "about:", "blob:")):
                    problems.append(f"network request: {req}")
        self.send("Target.closeTarget", {"targetId": target})
        return problems + ([] if figs.get("result", {}).get("value", 0) else ["no Plotly figure rendered"])

    def close(self):
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        self.proc.wait(timeout=10)


def moesd(*args, quiet: bool = True) -> None:
    subprocess.run([sys.executable, "-m", "simulator", *args, *(["--quiet"] if quiet else [])], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def make_reports(out: Path) -> list[Path]:
    moesd("simulate", "quickstart", "--out", str(out / "simulate"), "--set", "workload.num_prompts=100")
    moesd("sweep", "quickstart", "--out", str(out / "sweep"), "--batch-sizes", "1,8,32", "--num-speculative-tokens",
          "1..3", "--set", "workload.random_output_len=64", "--cache-dir", str(out / "cache"))
    moesd("plan", "--model", "Qwen2-7B", "--system", "h100_sxm", "--total-gpus", "1", "--tpot", "40",
          "--isl", "256", "--osl", "64", "--num-prompts", "60", "--out", str(out / "plan"),
          "--cache-dir", str(out / "cache"))
    moesd("validate", "--cases", "dense_decode", "--out", str(out / "validate"), "--cache-dir", str(out / "cache"))
    reports = [out / d / "report.html" for d in ("simulate", "sweep", "plan", "validate")]
    from simulator.common.paths import shared_traces_dir
    if (shared_traces_dir() / "kernels").is_dir():
        moesd("calibrate", "--gpu", "h100_sxm", "--dry-run", "--report", str(out / "calibration_h100_sxm.html"),
              quiet=False)
        reports.append(out / "calibration_h100_sxm.html")
    else:
        print("calibration report skipped: no ../shared traces")
    return reports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="write the reports here instead of a temporary folder")
    args = ap.parse_args()
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="moesd-reports-"))
    reports = make_reports(tmp)
    browser = Browser(exe)
    bad = 0
    try:
        for r in reports:
            problems = browser.check(r.resolve().as_uri())
            bad += len(problems)
            print(f"{'ok ' if not problems else 'BAD'} {r.relative_to(tmp)} ({r.stat().st_size / 1e6:.1f} MB)")
            for p in problems:
                print(f"    {p}")
    finally:
        browser.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(reports)} reports, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
