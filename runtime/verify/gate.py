"""`verify`: observe a package and check it against the spec's contracts; one report.

Used by the `verify` job and by `modelspec verify SPEC PACKAGE`. The report keeps the whole
observed contract next to the mismatches, so a failed check can be read without the package.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from compiler.planning.params import VerifyParams

from .check import as_json, check, locate
from .observe import observe


def verify(params: VerifyParams, package: Path, *, spec_hash: str, tokenizer: Path | None,
           convert_fingerprint: str | None = None, doc: Any = None) -> dict[str, Any]:
    """The verify report; `doc` (the loaded spec document) turns key paths into file:line:col."""
    from runtime.data.chat import folder_chat_template
    from runtime.hashing import tree_sha256

    start = time.perf_counter()
    package = Path(package)
    if not (package / "Manifest.json").is_file():
        raise FileNotFoundError(f"{package} is not an .mlpackage (no Manifest.json)")
    obs = observe(package, [q.module for q in params.quantization], params.precision.island_modules)
    template = folder_chat_template(tokenizer) if tokenizer else None
    result = check(params, obs, spec_hash=spec_hash, tokenizer_sha256=tree_sha256(tokenizer) if tokenizer else None,
                   convert_fingerprint=convert_fingerprint,
                   chat_template_sha256=hashlib.sha256(template.encode("utf-8")).hexdigest() if template else None)
    if doc is not None:
        locate(result["mismatches"], doc)
    return {**as_json(result), "package": str(package.name), "spec_hash": spec_hash,
            "seconds": round(time.perf_counter() - start, 3), "observed": obs}


def summary_lines(report: dict[str, Any]) -> list[str]:
    from .check import Mismatch

    lines = [Mismatch(**m).line() for m in report["mismatches"]]
    lines += [f"[not checked] {n}" for n in report["not_checked"]]
    return lines
