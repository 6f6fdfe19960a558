"""Steps launched kernel by kernel: SGLang's and TensorRT-LLM's steps with prompt tokens."""

import pytest

from simulator.config import model, precision
from simulator.config.scenario import parse
from simulator.cost import launches
from simulator.cost.framework import FrameworkStep
from simulator.serving.simulation import build, simulate


def test_kernel_count_closed_forms():
    bf16, fp8b = precision.get("bf16"), precision.get("fp8_block")
    llama = model.load("Llama-3.1-8B")                       # 32 dense GQA layers
    assert launches.kernels_per_forward(llama, bf16, bf16, 1) == 32 * (6 + 4) + 3
    # TP adds two all-reduces a layer; quantised activations one kernel per GEMM (2 attention, 2 FFN)
    assert launches.kernels_per_forward(llama, fp8b, fp8b, 2) == 32 * (6 + 2 + 2 + 4 + 2) + 3
    ds = model.load("DeepSeek-V3")                           # 61 MLA layers: 3 dense, 58 MoE with a shared expert
    assert (ds.num_hidden_layers, ds.num_moe_layers) == (61, 58)
    per_layer = 12 + 6 + 2                                   # MLA, its 6 GEMMs' quantisation, 2 all-reduces
    moe = 8 + 2 + 3 + 2                                      # routed experts, their quantisation, the shared expert
    assert launches.kernels_per_forward(ds, fp8b, fp8b, 8) == 61 * per_layer + 3 * (4 + 2) + 58 * moe + 3
    oss = model.load("gpt-oss-120b")                         # MoE without a shared expert, W4A16 experts
    assert launches.kernels_per_forward(oss, bf16, precision.get("mxfp4"), 1) == 36 * (6 + 8) + 3


def test_launch_bound_and_gpu_bound_limits():
    """A step launched kernel by kernel lasts max(GPU, launches); the CPU terms come on top of that."""
    for overlap in (False, True):
        s = FrameworkStep(1e-3, 0.0, 0.0, overlap, 1e-4, kernel_launch_s=50e-6)
        # GPU-bound (2000 kernels x 50 us = 0.1 s < 0.5 s): exactly as a graph replay
        assert s.overhead_s(0.5, 4, launches=2000) == s.overhead_s(0.5, 4)
        # launch-bound: the step takes the launches, then its CPU and sync as if the GPU had run that long
        g = 0.02
        assert g + s.overhead_s(g, 4, launches=2000) == pytest.approx(0.1 + s.overhead_s(0.1, 4))
        for gpu in (1e-3, 0.05, 0.1, 0.3):
            assert gpu + s.overhead_s(gpu, 4, launches=2000) >= max(gpu, 0.1)
    assert FrameworkStep(kernel_launch_s=0.0).overhead_s(0.01, 1, launches=10_000) == FrameworkStep().overhead_s(0.01, 1)


def _one_prompt(framework, us=None, isl=1024, layout=None):
    """Two prompts one after the other (max_num_seqs 1): DeepSeek-V3 FP8 on 8x H200."""
    eng = {"framework": framework, "max_num_seqs": 1}
    if us is not None:
        eng["prefill_kernel_launch_us"] = us
    sc = parse({"model": "DeepSeek-V3", "hardware": {"gpu": "h200_sxm", **(layout or {"tensor_parallel_size": 8})},
                "engine": eng, "workload": {"dataset_name": "fixed", "num_prompts": 2, "random_input_len": isl,
                                            "random_output_len": 16, "request_rate": "inf"}}, "test")
    setup = build(sc)
    summary, req, log = simulate(setup)
    return setup, summary, req, log.frame()


@pytest.mark.parametrize("layout,tp", [(None, 8), ({"tensor_parallel_size": 4, "data_parallel_size": 2,
                                                    "enable_expert_parallel": True}, 4)])
def test_short_prompt_waits_on_its_launches_decode_does_not(layout, tp):
    """One worker, and an attention-DP worker (its ranks step together: the step with the prompt waits)."""
    setup, _, req0, steps0 = _one_prompt("sglang", 0.0, layout=layout)
    _, summary, req1, steps1 = _one_prompt("sglang", 200.0, layout=layout)
    assert summary["prefill_kernel_launch_us"] == pytest.approx(200.0)          # the run states it
    n = setup.target_fm.eager_kernels
    assert n == launches.kernels_per_forward(model.load("DeepSeek-V3"), precision.get("fp8_block"),
                                             precision.get("fp8_block"), tp)
    pre0, pre1 = steps0[steps0.num_prefill > 0], steps1[steps1.num_prefill > 0]
    dec0, dec1 = steps0[steps0.num_prefill == 0], steps1[steps1.num_prefill == 0]
    # a 1,024-token prefill of DeepSeek-V3 on 8 GPUs runs far under n x 200 us: the launches decide it
    assert pre0.duration_s.max() < n * 200e-6
    assert pre1.duration_s.min() >= n * 200e-6
    # decode steps replay CUDA graphs: untouched, to the bit
    assert dec1.duration_s.tolist() == dec0.duration_s.tolist()
    assert (req1.ttft_s > req0.ttft_s).all()
