"""``moesd kernel``: one kernel's predicted latency with its roofline terms, bytes and path."""

from __future__ import annotations


def predict(args) -> dict:
    from ..cost.costmodel import CostModel   # imported when used: keeps `moesd --help` fast
    cm = CostModel(args.gpu, l2_warm=args.l2_warm)
    if args.op == "gemm":
        c = cm.gemm(args.m, args.n, args.k, 1.0 if args.dtype == "fp8" else 2.0)
    elif args.op == "moe":
        c = cm.moe(args.num_tokens, args.hidden_size, args.inter_size, args.num_experts, args.topk,
                   args.moe_tp_size, args.moe_ep_size, args.distribution, not args.non_gated)
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


def add_parser(sub):
    p = sub.add_parser("kernel", help="predict one kernel's latency")
    p.add_argument("op", choices=["gemm", "moe", "attention", "allreduce"])
    p.add_argument("--gpu", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--l2-warm", action="store_true", help="benchmark conditions (working set kept in L2)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "fp8"])
    for f in ("m", "n", "k"):
        p.add_argument(f"--{f}", type=int, default=1)
    p.add_argument("--num-tokens", type=int, default=1)
    p.add_argument("--hidden-size", type=int, default=4096)
    p.add_argument("--inter-size", type=int, default=14336)
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--moe-tp-size", type=int, default=1)
    p.add_argument("--moe-ep-size", type=int, default=1)
    p.add_argument("--distribution", default="uniform", help="uniform | balanced | power_law_<exponent>")
    p.add_argument("--non-gated", action="store_true", help="experts with two weight matrices (no gate)")
    p.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--isl", type=int, default=1024, help="context length (decode) or prompt length (prefill)")
    p.add_argument("--q-len", type=int, default=1, help="query tokens per sequence (k+1 when verifying)")
    p.add_argument("--num-heads", type=int, default=32)
    p.add_argument("--num-key-value-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--message-size", type=int, default=1 << 20, help="bytes")
    p.add_argument("--num-gpus", type=int, default=2)
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
