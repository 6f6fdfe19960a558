"""Inputs as validated data: GPU specs, model architectures, scenarios and capacity plans (YAML + pydantic)."""
