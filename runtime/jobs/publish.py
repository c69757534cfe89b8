"""The `publish` job: the release manifest for exactly the package the gates passed.

Refuses (raises) unless the gates report passed every hard gate for this package's canonical
hash, verify passed and the tokenizer folder hashes to the package's stamped
`modelspec.tokenizer_sha256`. Writes `out/app/` (`runtime_config.json` and, when the tokenizer
carries one, `chat_template.jinja`: runtime/jobs/publish_config.py), `out/hf/` (the student as a
Hugging Face folder, from the checkpoint the package was exported from: a release is loadable as
an `hf_local` teacher) and `out/manifest.json`: the
sha256 of every file of the release (the package files, the tokenizer folder, the app files, hf/, the
gates, verify and convert reports, the golden vectors), the canonical package hash, the spec
hash, the job fingerprints and the gates report itself. `modelspec publish SPEC --to DIR`
copies the release and this manifest into place atomically (runtime/release.py); the layout is
in docs/release.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.planning.params import PublishParams
from runtime.data.chat import folder_chat_template
from runtime.jobs.publish_config import (
    CHAT_TEMPLATE, RUNTIME_CONFIG, TOKENIZER_DIR, ConfigError, runtime_config,
)

HF_DIR = "hf"  # the release's Hugging Face folder


class PublishRefused(RuntimeError):
    """The package is not releasable; the message says which gate or check stands in the way."""


def _json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _tree(folder: Path, prefix: str) -> dict[str, Path]:
    return {f"{prefix}{p.relative_to(folder).as_posix()}": p for p in sorted(folder.rglob("*")) if p.is_file()}


def release_files(inputs: dict[str, dict[str, Path]]) -> dict[str, Path]:
    """Release-relative path -> source file: the package tree, the tokenizer folder (`tokenizer/`),
    the publish job's app files (`inputs["publish"]["app"]`, at the release root: runtime_config.json,
    chat_template.jinja), the reports and the golden vectors."""
    package = Path(inputs["convert"]["package"])
    files = _tree(package, f"{package.name}/")
    if "tokenizer" not in inputs or "tokenizer" not in inputs["tokenizer"]:
        raise PublishRefused("publish needs the tokenizer job's folder (inputs['tokenizer']['tokenizer']): it ships with the release")
    files |= _tree(Path(inputs["tokenizer"]["tokenizer"]), f"{TOKENIZER_DIR}/")
    app = (inputs.get("publish") or {}).get("app")
    if app is not None:
        files |= _tree(Path(app), "")
    hf = (inputs.get("publish") or {}).get("hf")
    if hf is not None and Path(hf).is_dir():
        files |= _tree(Path(hf), f"{HF_DIR}/")
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


def check_tokenizer(inputs: dict[str, dict[str, Path]], convert: dict[str, Any]) -> tuple[Path, str]:
    """The tokenizer folder and its hash, which must be the one stamped in the package."""
    from runtime.hashing import tree_sha256

    if "tokenizer" not in inputs or "tokenizer" not in inputs["tokenizer"]:
        raise PublishRefused("publish needs the tokenizer job's folder (inputs['tokenizer']['tokenizer']): it ships with the release")
    tokenizer = Path(inputs["tokenizer"]["tokenizer"])
    actual = tree_sha256(tokenizer)
    stamped = (convert.get("metadata") or {}).get("modelspec.tokenizer_sha256")
    if stamped != actual:
        raise PublishRefused(f"the tokenizer folder {tokenizer} hashes to {actual}, but the package was built with tokenizer "
                             f"{stamped or '(none stamped)'} (modelspec.tokenizer_sha256); rerun the tokenizer and convert jobs")
    return tokenizer, actual


def _hf_folder(params: PublishParams, inputs: dict[str, dict[str, Path]], tokenizer: Path, dest: Path) -> Path | None:
    """The student as a Hugging Face folder (runtime/model/hf_export.py) from the checkpoint the
    package was exported from: what makes a release loadable as an `hf_local` teacher (a worker
    teaching its drafter) or by any transformers tool. None when the plan gave no checkpoint."""
    checkpoints = [Path(outs["checkpoint"]) for job, outs in sorted(inputs.items()) if "checkpoint" in outs]
    if not checkpoints:
        return None
    if len(checkpoints) > 1:
        raise PublishRefused(f"publish was given {len(checkpoints)} checkpoints; it takes the student's one")
    from runtime.model.hf_export import write_hf_folder

    special = {name: tok.id for name, tok in params.special_tokens.items()}
    write_hf_folder(checkpoints[0], tokenizer, dest, special)
    return dest


def run(params: PublishParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict[str, Any]:
    from runtime.hashing import file_sha256

    gates, verify, convert = check_releasable(inputs)
    tokenizer, tokenizer_sha256 = check_tokenizer(inputs, convert)
    app = Path(out) / "app"
    app.mkdir(parents=True, exist_ok=True)
    template = folder_chat_template(tokenizer)
    if template is not None:
        (app / CHAT_TEMPLATE).write_text(template, encoding="utf-8")
    try:
        config = runtime_config(params, convert, tokenizer, tokenizer_sha256, template is not None)
    except ConfigError as exc:
        raise PublishRefused(str(exc)) from exc
    (app / RUNTIME_CONFIG).write_text(json.dumps(config, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    hf = _hf_folder(params, inputs, tokenizer, Path(out) / HF_DIR)
    provenance = ctx.provenance
    fingerprints = {job: up["fingerprint"] for job, up in sorted((provenance.get("upstream") or {}).items())}
    meta = convert.get("metadata", {})
    manifest = {
        "name": params.name, "version": params.version,
        "package": convert["package"], "package_hash": convert["canonical_hash"], "size_mb": convert["size_mb"],
        "spec_hash": (provenance.get("spec") or {}).get("hash"),
        "fingerprints": {"jobs": fingerprints, "package": json.loads(meta.get("modelspec.fingerprints", "{}"))},
        "tokenizer_sha256": tokenizer_sha256,
        "runtime_config": RUNTIME_CONFIG, "chat_template": config["chat_template"],
        "hf": HF_DIR if hf is not None else None,
        "files": {rel: file_sha256(src) for rel, src in release_files(inputs | {"publish": {"app": app, "hf": hf}}).items()},
        "gates": gates["gates"],
    }
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return {"files": len(manifest["files"]), "package_hash": convert["canonical_hash"]}
