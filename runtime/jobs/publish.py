"""The `publish` job: the release manifest for exactly the package the gates passed.

Refuses (raises) unless the gates report passed every hard gate for this package's canonical
hash and verify passed. The manifest holds the sha256 of every file of the release (the package
files, the gates and verify reports), the canonical package hash, the spec hash, the job
fingerprints and the gates report itself. `modelspec publish SPEC --to DIR` copies the release
and this manifest into place atomically (runtime/release.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.planning.params import PublishParams


class PublishRefused(RuntimeError):
    """The package is not releasable; the message says which gate or check stands in the way."""


def _json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def release_files(inputs: dict[str, dict[str, Path]]) -> dict[str, Path]:
    """Release-relative path -> source file: the package tree plus the reports and golden vectors."""
    package = Path(inputs["convert"]["package"])
    files = {f"{package.name}/{p.relative_to(package).as_posix()}": p for p in sorted(package.rglob("*")) if p.is_file()}
    files["reports/gates.json"] = Path(inputs["gates"]["report"])
    files["reports/verify.json"] = Path(inputs["verify"]["report"])
    files["reports/convert.json"] = Path(inputs["convert"]["report"])
    for job, outs in sorted(inputs.items()):
        if "golden" in outs:
            files[f"golden/{job}.npz"] = Path(outs["golden"])
    return files


def check_releasable(inputs: dict[str, dict[str, Path]]) -> tuple[dict, dict, dict]:
    gates, verify, convert = (_json(inputs[j]["report"]) for j in ("gates", "verify", "convert"))
    if not gates.get("passed"):
        raise PublishRefused("hard gates did not pass: " + ", ".join(gates.get("hard_not_passed", [])))
    if gates.get("package_hash") != convert["canonical_hash"]:
        raise PublishRefused(f"the gates passed for package {gates.get('package_hash')}, this package is {convert['canonical_hash']}")
    if not verify.get("passed"):
        raise PublishRefused(f"verify found {len(verify.get('mismatches', []))} contract mismatch(es)")
    return gates, verify, convert


def run(params: PublishParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict[str, Any]:
    from runtime.hashing import file_sha256

    gates, verify, convert = check_releasable(inputs)
    provenance = ctx.provenance
    fingerprints = {job: up["fingerprint"] for job, up in sorted((provenance.get("upstream") or {}).items())}
    meta = convert.get("metadata", {})
    manifest = {
        "name": params.name, "version": params.version,
        "package": convert["package"], "package_hash": convert["canonical_hash"], "size_mb": convert["size_mb"],
        "spec_hash": (provenance.get("spec") or {}).get("hash"),
        "fingerprints": {"jobs": fingerprints, "package": json.loads(meta.get("modelspec.fingerprints", "{}"))},
        "tokenizer_sha256": meta.get("modelspec.tokenizer_sha256"),
        "files": {rel: file_sha256(src) for rel, src in release_files(inputs).items()},
        "gates": gates["gates"],
    }
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return {"files": len(manifest["files"]), "package_hash": convert["canonical_hash"]}
