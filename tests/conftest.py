import pytest

from simulator.common.paths import shared_traces_dir


def shared_or_skip():
    d = shared_traces_dir() / "kernels" / "aiconfigurator"
    if not d.exists():
        pytest.skip(f"shared kernel traces not found at {d} (set MOESD_TRACES or place ../shared beside the repo)")
    return shared_traces_dir()
