"""The user metadata every package carries, and the check that a saved package has it.

Keys are `modelspec.*`; structured values are canonical JSON strings (CoreML metadata values
are strings). Nothing time-dependent goes in, so the same inputs give the same package.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import torch

from compiler.planning.params import ConvertParams
from runtime.data.chat import folder_chat_template
from runtime.hashing import tree_sha256

PREFIX = "modelspec."


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprints(provenance: dict[str, Any], export_reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """job id -> fingerprint: this job, its inputs, and the checkpoint job behind the exports."""
    out: dict[str, str] = {}
    job = provenance.get("job") or {}
    if "id" in job:
        out[job["id"]] = job["fingerprint"]
    for name, up in (provenance.get("upstream") or {}).items():
        out[name] = up["fingerprint"]
    for report in export_reports.values():
        for name, up in ((report.get("provenance") or {}).get("upstream") or {}).items():
            out.setdefault(name, up["fingerprint"])
    return dict(sorted(out.items()))


def versions() -> dict[str, str]:
    return {"coremltools": ct.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def package_metadata(params: ConvertParams, provenance: dict[str, Any], tokenizer: Path,
                     export_reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    spec = provenance.get("spec") or {}
    values = {
        "spec_hash": spec.get("hash", ""),
        "spec": _json(spec),
        "name": params.name,
        "fingerprints": _json(fingerprints(provenance, export_reports)),
        "tokenizer_sha256": tree_sha256(tokenizer),
        "special_tokens": _json({k: v.id for k, v in sorted(params.special_tokens.items())}),
        "versions": _json(versions()),
        "packaging": params.packaging,
        "compute_units": params.compute_units,
        "target": params.target,
    }
    template = folder_chat_template(tokenizer)
    if template is not None:  # the app formats prompts exactly as training rendered them
        values["chat_template"] = template
        values["chat_template_sha256"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
    init = init_provenance(export_reports)
    if init is not None:  # the pretrained checkpoint the student started from (training.init)
        values["init"] = _json(init)
    return {PREFIX + k: v for k, v in values.items()}


def init_provenance(export_reports: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the exported checkpoint's weights started from: {model_type, weights_sha256, files}, or None (random)."""
    for report in export_reports.values():
        init = ((report.get("checkpoint") or {}).get("provenance") or {}).get("init")
        if init:
            return {k: init[k] for k in ("model_type", "weights_sha256", "files") if k in init}
    return None


def missing_metadata(metadata: dict[str, str], expected: dict[str, str]) -> list[str]:
    """Keys of `expected` absent from (or different in) a saved package's metadata."""
    return sorted(k for k, v in expected.items() if metadata.get(k) != v)
