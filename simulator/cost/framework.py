"""The framework (CPU) side of an engine step: scheduling, input preparation, sampling, speculative
bookkeeping, and whether the framework overlaps it with the GPU's work.

Pure. ``FrameworkStep.overhead_s`` is what a step adds to its GPU time:
- without overlap (vLLM V0-style loop): CPU + sync;
- with overlap (SGLang's overlap scheduler, vLLM V1 async scheduling, TRT-LLM's overlap scheduler:
  the CPU prepares step n+1 while the GPU runs step n): max(0, CPU - GPU) + sync.
``sync`` is what cannot overlap (TP workers' broadcast, output copy back to the host); ``sync_frac``
the share of the step's GPU time its ranks lose waiting for the slowest at their collectives.
A step launched kernel by kernel (SGLang's and TensorRT-LLM's steps with prompt tokens: their CUDA
graphs hold decode batches only) lasts at least its launches, ``kernel_launch_s`` each
(simulator/cost/launches.py counts them): the GPU waits on the CPU in between.
A speculative round adds ``spec_round`` (rejection sampling, tree build and masks, the bookkeeping of
accepted tokens) and ``draft_pass`` per draft forward pass (the proposer's own input preparation and
launches): the target's next step needs their result, so they never overlap with the GPU.
Defaults per framework and version are data (``workloads/frameworks.yaml``), never code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameworkStep:
    step_cpu_s: float = 0.0015          # per engine step: scheduler, input preparation, sampling
    per_seq_cpu_s: float = 0.0          # per scheduled sequence
    spec_round_cpu_s: float = 0.0       # extra per speculative round (tree build, rejection sampling)
    cpu_overlap: bool = False
    sync_s: float = 0.0
    draft_pass_cpu_s: float = 0.0       # per draft forward pass of a speculative round
    sync_frac: float = 0.0              # GPU time lost to the slowest rank, per second of GPU time
    kernel_launch_s: float = 0.0        # CPU per kernel of a step launched without CUDA graphs

    def cpu_s(self, num_seqs: int) -> float:
        return self.step_cpu_s + self.per_seq_cpu_s * num_seqs

    def spec_s(self, draft_passes: int) -> float:
        """The speculative round's own CPU time (a round with ``draft_passes`` draft forwards)."""
        return self.spec_round_cpu_s + self.draft_pass_cpu_s * draft_passes

    def overhead_s(self, gpu_s: float, num_seqs: int, spec_round: bool = False, draft_passes: int = 0,
                   launches: int = 0) -> float:
        """Seconds a step takes beyond ``gpu_s`` of GPU work; ``launches``: kernels it launches one
        by one (0: replayed from a CUDA graph)."""
        starved = max(0.0, self.kernel_launch_s * launches - gpu_s)
        return starved + self._beyond(gpu_s + starved, num_seqs, spec_round, draft_passes)

    def _beyond(self, gpu_s: float, num_seqs: int, spec_round: bool, draft_passes: int) -> float:
        cpu = self.cpu_s(num_seqs)
        spec = self.spec_s(draft_passes) if spec_round else 0.0
        wait = self.sync_s + self.sync_frac * gpu_s
        if self.cpu_overlap:
            return max(0.0, cpu - gpu_s) + wait + spec
        return cpu + wait + spec
