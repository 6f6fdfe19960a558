"""``moesd profile``: measure the cost model's kernels on the local device, in the trace schema.

Needs only torch, numpy, pandas and pyyaml (the ``[profile]`` extra), so it runs on a bare GPU box.
``harness`` times and records, ``ops`` builds the measured callables, ``plan`` lists the shapes,
``e2e`` measures whole MoE decoder layers with 1 vs k+1 query tokens (raw target efficiency).
"""
