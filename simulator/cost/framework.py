"""The framework (CPU) side of an engine step: scheduling, input preparation, sampling, speculative
bookkeeping, and whether the framework overlaps it with the GPU's work.

Pure. ``FrameworkStep.overhead_s`` is what a step adds to its GPU time:
- without overlap (vLLM V0-style loop): CPU + sync;
- with overlap (SGLang's overlap scheduler, vLLM V1 async scheduling, TRT-LLM's overlap scheduler:
  the CPU prepares step n+1 while the GPU runs step n): max(0, CPU - GPU) + sync.
``sync`` is what cannot overlap (TP workers' broadcast, output copy back to the host).
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

    def cpu_s(self, num_seqs: int, spec_round: bool = False) -> float:
        return self.step_cpu_s + self.per_seq_cpu_s * num_seqs + (self.spec_round_cpu_s if spec_round else 0.0)

    def overhead_s(self, gpu_s: float, num_seqs: int, spec_round: bool = False) -> float:
        """Seconds a step takes beyond ``gpu_s`` of GPU work."""
        cpu = self.cpu_s(num_seqs, spec_round)
        if self.cpu_overlap:
            return max(0.0, cpu - gpu_s) + self.sync_s
        return cpu + self.sync_s
