"""Derive the validation cases (traces/e2e/cases.csv) from the hardware measurements in
../shared/traces/e2e/ (read in place; only the selected figures are written here).

    python traces/e2e/derive_cases.py [--shared ../shared/traces/e2e]

Each case names the scenario that reproduces its setup (traces/e2e/scenarios/) and the overrides
that set its batch, lengths and SD knobs; the measured acceptance length is an input, nothing else.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
LIB = "https://github.com/argonne-lcf/LLM-Inference-Bench (All_results.csv)"
SGL = "https://github.com/sgl-project/SpecForge/issues/339"

# (hardware, count, framework, model) -> (scenario, family)
LIB_SETUPS = {
    ("Nvidia A100 GPU", 4, "vLLM", "mistralai/Mixtral-8x7B-v0.1"): ("mixtral_4xa100_vllm", "moe_decode"),
    ("Nvidia A100 GPU", 4, "TensorRT-LLM", "mistralai/Mixtral-8x7B-v0.1"): ("mixtral_4xa100_trtllm", "moe_decode"),
    ("Nvidia H100 GPU", 4, "TensorRT-LLM", "mistralai/Mixtral-8x7B-v0.1"): ("mixtral_4xh100_trtllm", "moe_decode"),
    ("Nvidia H100 GPU", 1, "vLLM", "meta-llama/Meta-Llama-3-8B"): ("llama3_8b_h100_vllm", "dense_decode"),
    ("Nvidia A100 GPU", 1, "vLLM", "meta-llama/Meta-Llama-3-8B"): ("llama3_8b_a100_vllm", "dense_decode"),
    ("Nvidia H100 GPU", 1, "vLLM", "Qwen/Qwen2-7B"): ("qwen2_7b_h100_vllm", "dense_decode"),
}
LENGTHS = (128, 512, 2048)
BATCHES = (1, 16, 64)


def lib_cases(shared: Path) -> list[dict]:
    d = pd.read_csv(shared / "llm-inference-bench" / "All_results.csv")
    rows = []
    for (hwname, n, fw, model), (scen, fam) in LIB_SETUPS.items():
        sel = d[(d.Hardware == hwname) & (d["Num of Hardware"] == n) & (d.Framework == fw) & (d.Model == model)]
        for length in LENGTHS:
            for b in BATCHES:
                m = sel[(sel["Input Output Length"] == length) & (sel["Batch Size"] == b)]
                if m.empty:
                    continue
                lat = float(m.Latency.median())       # repeated runs: their median
                rows.append({"case": f"{scen}_L{length}_B{b}", "family": fam, "scenario": scen, "batch_size": b,
                             "input_len": length, "output_len": length, "length_spread": 0.0, "num_prompts": b,
                             "num_speculative_tokens": 0, "eagle_topk": 0, "num_draft_tokens": 0,
                             "acceptance_length": 1.0, "measured_latency_s": lat,
                             "measured_throughput_tok_s": b * 2 * length / lat, "throughput_kind": "total",
                             "baseline": "", "source": LIB})
    return rows


def sglang_cases(shared: Path) -> list[dict]:
    d = pd.read_csv(shared / "published" / "sglang_eagle3_qwen3-30b-a3b_h100x2.csv", comment="#")
    rows = []
    for r in d.itertuples():
        sd = r.spec_steps > 0
        base = f"qwen3_eagle3_2xh100_sglang_B{r.batch_size}_nosd"
        name = (f"qwen3_eagle3_2xh100_sglang_B{r.batch_size}_s{r.spec_steps}t{r.eagle_topk}d{r.num_draft_tokens}"
                if sd else base)
        rows.append({"case": name, "family": "moe_sd" if sd else "moe_decode", "scenario": "qwen3_eagle3_2xh100_sglang",
                     "batch_size": r.batch_size, "input_len": 512, "output_len": 2048, "length_spread": 0.5,
                     "num_prompts": 20,
                     "num_speculative_tokens": r.spec_steps, "eagle_topk": r.eagle_topk,
                     "num_draft_tokens": r.num_draft_tokens, "acceptance_length": r.accept_length,
                     "measured_latency_s": float("nan"), "measured_throughput_tok_s": r.throughput_tok_s,
                     "throughput_kind": "output", "baseline": base if sd else "", "source": SGL})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(HERE.parents[2] / "shared" / "traces" / "e2e"))
    args = ap.parse_args()
    shared = Path(args.shared)
    cases = pd.DataFrame(lib_cases(shared) + sglang_cases(shared))
    buf = io.StringIO()
    cases.to_csv(buf, index=False, float_format="%.6g")
    (HERE / "cases.csv").write_text(buf.getvalue())
    print(f"wrote {len(cases)} cases to {HERE / 'cases.csv'}")


if __name__ == "__main__":
    main()
