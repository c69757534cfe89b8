"""modelspec's compiler: reads YAML specs, validates them, resolves plans and emits contracts.

It never imports `runtime/`, torch, transformers or coremltools; see docs/architecture.md.
"""
