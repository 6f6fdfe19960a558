"""The serving engine: SimPy processes (arrivals, clients, replicas) decide *when* things happen; the
scheduler, the speculative round and the coast decide *what* a step computes; the cost layer says how long."""
