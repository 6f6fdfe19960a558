"""The pure cost model: roofline kernels calibrated on measured traces, MoE routing, and the cost of one
engine step per operation. No SimPy and no clock: every function answers "how long"."""
