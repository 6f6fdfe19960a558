"""``moesd kernel``: one kernel's predicted latency with its roofline terms, bytes and path."""

from __future__ import annotations

import argparse
import json
import re

from ..common.errors import ConfigError

MAX_DIM = 1 << 24          # any size argument; far above real shapes, small enough to price


def count(text: str, hi: int = MAX_DIM) -> int:
    """An argparse type: an integer in [1, hi]."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= hi:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {hi}], got {v}")
    return v


def count_bytes(text: str) -> int:
    return count(text, 1 << 40)


def distribution(text: str) -> str:
    if text in ("uniform", "balanced") or re.fullmatch(r"power_law_\d+(\.\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected uniform, balanced or power_law_<exponent>, got {text!r}")


def predict(args) -> dict:
    from ..config import gpu as gpu_mod     # imported when used: keeps `moesd --help` fast
    from ..cost.costmodel import CostModel
    if args.moe_tp_size > args.inter_size:
        raise ConfigError(f"moe_tp_size {args.moe_tp_size} exceeds inter_size {args.inter_size}", field="--moe-tp-size")
    from ..config import precision
    hw = gpu_mod.load(args.gpu, field="--gpu")
    # the weight precision of a GEMM or MoE: --precision, else --dtype (the older flag), else bf16
    prec = precision.get(args.precision or ("fp8" if args.dtype == "fp8" else "bf16"), field="--precision")
    precision.check_supported(prec, hw, field="--precision")
    cm = CostModel(hw, framework=args.framework, l2_warm=args.l2_warm)
    if args.op == "gemm":
        c = cm.gemm(args.m, args.n, args.k, prec)
    elif args.op == "moe":
        c = cm.moe(args.num_tokens, args.hidden_size, args.inter_size, args.num_experts, args.topk,
                   args.moe_tp_size, args.moe_ep_size, args.distribution, not args.non_gated, prec=prec)
    elif args.op == "attention":
        if args.phase == "decode":
            c = cm.attention_decode(args.batch_size, args.isl, args.num_heads, args.num_key_value_heads,
                                    args.head_dim, args.q_len)
        else:
            c = cm.attention_prefill(args.batch_size, args.isl, args.num_heads, args.num_key_value_heads,
                                     args.head_dim)
    else:
        c = cm.allreduce(args.message_size, args.num_gpus, not args.eager)
    return c.as_dict()


def run(args) -> int:
    out = predict(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>24}: {v:.6g}" if isinstance(v, float) else f"{k:>24}: {v}")
    return 0


def add_parser(sub):
    p = sub.add_parser("kernel", help="predict one kernel's latency")
    p.add_argument("op", choices=["gemm", "moe", "attention", "allreduce"])
    p.add_argument("--gpu", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--l2-warm", action="store_true", help="benchmark conditions (working set kept in L2)")
    p.add_argument("--framework", default=None, choices=["vllm", "sglang", "trtllm"],
                   help="whose kernel fits price a GEMM or MoE (default: the GPU's base calibration)")
    p.add_argument("--precision", default=None, help="GEMM/MoE weight precision: bf16, fp8, fp8_block, nvfp4, mxfp4, int4_wo, ...")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "fp8"], help="older spelling of --precision bf16/fp8")
    for f in ("m", "n", "k"):
        p.add_argument(f"--{f}", type=count, default=1)
    p.add_argument("--num-tokens", type=count, default=1)
    p.add_argument("--hidden-size", type=count, default=4096)
    p.add_argument("--inter-size", type=count, default=14336)
    p.add_argument("--num-experts", type=count, default=8)
    p.add_argument("--topk", type=count, default=2)
    p.add_argument("--moe-tp-size", type=count, default=1)
    p.add_argument("--moe-ep-size", type=count, default=1)
    p.add_argument("--distribution", type=distribution, default="uniform", help="uniform | balanced | power_law_<exponent>")
    p.add_argument("--non-gated", action="store_true", help="experts with two weight matrices (no gate)")
    p.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    p.add_argument("--batch-size", type=count, default=1)
    p.add_argument("--isl", type=count, default=1024, help="context length (decode) or prompt length (prefill)")
    p.add_argument("--q-len", type=count, default=1, help="query tokens per sequence (k+1 when verifying)")
    p.add_argument("--num-heads", type=count, default=32)
    p.add_argument("--num-key-value-heads", type=count, default=8)
    p.add_argument("--head-dim", type=count, default=128)
    p.add_argument("--message-size", type=count_bytes, default=1 << 20, help="bytes")
    p.add_argument("--num-gpus", type=count, default=2)
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
