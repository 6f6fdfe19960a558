"""Shared plumbing for every layer: one-line user errors, data paths, cached YAML reads, atomic writes."""
