"""The spec as written (pydantic models mirroring the YAML); see docs/spec.md."""

from .spec import SUPPORTED_FORMATS, Spec

__all__ = ["SUPPORTED_FORMATS", "Spec"]
