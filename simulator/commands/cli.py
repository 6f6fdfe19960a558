"""``moesd`` command line: simulate, sweep, plan, validate, calibrate, kernel, profile."""

from __future__ import annotations

import argparse
import os
import sys

from ..common.errors import ConfigError
from . import kernel


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit 2 (argparse prints the whole usage first)."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _add_profile(sub) -> None:
    ap = sub.add_parser("profile", help="measure kernels on this machine's GPU (or CPU) into trace files")
    ap.add_argument("--out", required=True, help="folder for <op>.csv files (e.g. traces/kernels/h100_sxm)")
    ap.add_argument("--gpu", help="spec name to record (default: from the device name)")
    ap.add_argument("--preset", choices=["tiny", "models"], default="models",
                    help="tiny: small shapes for a CPU smoke run; models: the shapes of --models")
    ap.add_argument("--models", default="Qwen2-57B-A14B,Mixtral-8x7B-v0.1,Qwen3-30B-A3B,Qwen2-0.5B")
    ap.add_argument("--tp", default="1,2", help="tensor-parallel slices to measure (comma list)")
    ap.add_argument("--e2e-models", default="Qwen2-57B-A14B,Mixtral-8x7B-v0.1,OPT-30B")
    ap.add_argument("--e2e-layers", type=int, default=4)
    ap.add_argument("--e2e-q-lens", default="1,4", help="query tokens per sequence (k+1) for the e2e forwards")
    ap.add_argument("--e2e-tp", default="1", help="tensor-parallel slices for the e2e forwards (one GPU's share)")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="stop measuring after this long")


def _add_run_options(p, cache_help: str = "reuse results of identical runs stored here") -> None:
    """Options shared by the commands that run many simulations."""
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--executor", default="local", choices=["local", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--cache-dir", default=None, help=cache_help)
    p.add_argument("--out", default=None)
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quiet", action="store_true")


def main(argv=None) -> int:
    parser = _Parser(prog="moesd", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("simulate", help="run a serving scenario")
    p.add_argument("scenario")
    p.add_argument("--out", help="output folder (default reports/<scenario name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("calibrate", help="fit a GPU's cost model to kernel traces")
    p.add_argument("--traces", default=None, help="trace folder (default $MOESD_TRACES or ../shared/traces)")
    p.add_argument("--gpu", default=None, help="the GPU to fit (a gpu_specs/ name); required but with --alltoall")
    p.add_argument("--report", default=None, help="HTML report path (default reports/calibration_<gpu>.html)")
    p.add_argument("--dry-run", action="store_true", help="fit and report, leave gpu_specs/ unchanged")
    p.add_argument("--framework", choices=["vllm", "sglang", "trtllm"], default=None,
                   help="(re)fit only GEMM and MoE per weight precision on this framework's kernel tables")
    p.add_argument("--version", default=None,
                   help="with --framework: fit that collected version's tables alone, kept beside the newest "
                        "(runs on that version or older are priced with them)")
    p.add_argument("--ops", default=None,
                   help="comma-separated base ops to refit (gemm, moe, attention_generation, attention_context, "
                        "allreduce); the rest of the calibration is kept")
    p.add_argument("--alltoall", action="store_true",
                   help="fit expert-parallel dispatch/combine on every GPU with DeepEP tables "
                        "(gpu_specs/calibration/alltoall.yaml)")

    p = sub.add_parser("sweep", help="SD speedup and target efficiency over batch size x k")
    p.add_argument("scenario")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--num-speculative-tokens", default="1..6", help="k values: 1,2,3 or 1..6")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dense-scenario", default="opt_dense_pair",
                   help="dense pair compared at the same GPU, TP, lengths and acceptance ('' to skip)")
    p.add_argument("--topk-sweep", default="1,2,4,8,16", help="top-K values for the sparsity sweep (closed form)")
    p.add_argument("--closed-form-only", action="store_true", help="skip the engine runs")
    _add_run_options(p)

    p = sub.add_parser("validate", help="compare simulated throughput/latency with hardware measurements")
    p.add_argument("--cases", default=None, help="case ids, families or scenarios (comma list; default all)")
    p.add_argument("--silicon", default=None, metavar="FILE",
                   help="measured serving runs in AIConfigurator's silicon-sample CSV schema instead of the cases")
    p.add_argument("--sample", type=int, default=None, metavar="N", help="with --silicon: a reproducible sample of N rows")
    p.add_argument("--sd-table", default=None, metavar="FILE",
                   help="speculative-decoding measurements in the schema of sd_training.csv instead of the cases")
    p.add_argument("--assume", default=None, metavar="YAML",
                   help="with --sd-table: documented assumptions filling empty cells per source "
                        "(e.g. traces/e2e/sd_training_assumptions.yaml)")
    p.add_argument("--source", default=None, help="with --sd-table: only rows whose source contains this text")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary and per-row list)")
    _add_run_options(p)

    p = sub.add_parser("plan", help="cheapest deployment meeting SLOs, with and without SD")
    p.add_argument("plan", nargs="?", help="plan.yaml (or use the AIConfigurator-style flags)")
    p.add_argument("--model")
    p.add_argument("--system", help="GPU spec name(s), comma separated")
    p.add_argument("--total-gpus", type=int, default=2)
    p.add_argument("--isl", type=int, default=1024)
    p.add_argument("--osl", type=int, default=256)
    p.add_argument("--ttft", type=float, help="ms")
    p.add_argument("--tpot", type=float, help="ms")
    p.add_argument("--e2el", type=float, help="ms")
    p.add_argument("--draft", help="draft model for SD candidates")
    p.add_argument("--draft-method", default="draft_model")
    p.add_argument("--acceptance-rate", type=float, help="per draft token (default 0.8, said as a default)")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--target-rate", type=float, help="req/s the deployment must sustain")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--top-n", type=int, default=5)
    _add_run_options(p, cache_help="default reports/.plan_cache")

    kernel.add_parser(sub)
    _add_profile(sub)
    args = parser.parse_args(argv)
    try:
        rc = _COMMANDS[args.cmd](args) or 0
        sys.stdout.flush()            # inside the try: a closed pipe is reported here, not at exit
        return rc
    except ConfigError as exc:
        print(f"moesd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moesd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`moesd plan | head`): stop quietly, as a shell tool does on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # the file system said no (permissions, a full disk, a file where a folder should be)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"moesd: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("moesd: error: out of memory; make the run smaller (num_prompts, sweep grid)", file=sys.stderr)
        return 2
    except Exception as exc:          # a bug, not bad input: one line, the traceback on request
        if os.environ.get("MOESD_DEBUG"):
            raise
        print(f"moesd: internal error: {exc.__class__.__name__}: {str(exc)[:300]} "
              "(set MOESD_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


def _lazy(module: str, fn: str = "run"):
    """Each command's module is imported when that command runs (keeps start-up fast)."""
    def call(args):
        import importlib
        return getattr(importlib.import_module(f"{__package__}.{module}"), fn)(args)
    return call


def _profile(args) -> int:
    try:
        from ..profiler import run as profiler
    except ImportError as exc:
        raise ConfigError(f"needs PyTorch ({exc}); install with: pip install -e '.[profile]'", field="profile")
    return profiler.main(args)


_COMMANDS = {"kernel": kernel.run, "calibrate": _lazy("calibrate", "main"), "profile": _profile,
             "plan": _lazy("plan"), "validate": _lazy("validate"), "sweep": _lazy("sweep"),
             "simulate": _lazy("simulate")}


if __name__ == "__main__":
    sys.exit(main())
