"""The publish job's refusals and the atomic release install (runtime/jobs/publish.py, runtime/release.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from compiler.planning.params import PublishParams
from runtime.hashing import file_sha256
from runtime.jobs import publish
from runtime.release import ReleaseError, install
from tests.runtime.helpers import Ctx

PROVENANCE = {"spec": {"name": "toy-worker", "version": "1.0.0", "hash": "spec-hash"},
              "upstream": {"gates": {"fingerprint": "fp-gates", "key": "k"}, "convert": {"fingerprint": "fp-convert", "key": "k"}}}


def _inputs(root: Path, *, passed: bool = True, gate_hash: str = "pkg-hash", verify_ok: bool = True,
            weight: bytes = b"weights-v1") -> dict[str, dict[str, Path]]:
    pkg = root / "convert" / "toy-worker.mlpackage"
    (pkg / "Data" / "weights").mkdir(parents=True, exist_ok=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "weights" / "weight.bin").write_bytes(weight)
    reports = {
        "gates": {"passed": passed, "package_hash": gate_hash, "hard_not_passed": [] if passed else ["eval.json_validity"],
                  "gates": [{"metric": "eval.json_validity", "outcome": "pass" if passed else "fail"}]},
        "verify": {"passed": verify_ok, "mismatches": [] if verify_ok else [{"what": "x"}]},
        "convert": {"package": pkg.name, "canonical_hash": "pkg-hash", "size_mb": 0.1,
                    "metadata": {"modelspec.fingerprints": json.dumps({"qat": "fp-qat"})}},
    }
    out: dict[str, dict[str, Path]] = {}
    for job, rep in reports.items():
        (root / job).mkdir(parents=True, exist_ok=True)
        (root / job / "report.json").write_text(json.dumps(rep))
        out[job] = {"report": root / job / "report.json"}
    out["convert"]["package"] = pkg
    (root / "parity-decode").mkdir(exist_ok=True)
    (root / "parity-decode" / "golden.npz").write_bytes(b"golden")
    out["parity-decode"] = {"report": root / "gates" / "report.json", "golden": root / "parity-decode" / "golden.npz"}
    return out


def _publish(tmp_path: Path, **kw) -> Path:
    inputs = _inputs(tmp_path / "in", **kw)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    publish.run(PublishParams(name="toy-worker", version="1.0.0"), inputs, out, Ctx(provenance=PROVENANCE))
    return out / "manifest.json"


def test_manifest_hashes_every_release_file_and_carries_provenance(tmp_path: Path) -> None:
    manifest = json.loads(_publish(tmp_path).read_text())
    assert manifest["package_hash"] == "pkg-hash" and manifest["spec_hash"] == "spec-hash"
    assert manifest["fingerprints"]["package"] == {"qat": "fp-qat"}
    assert set(manifest["files"]) == {"toy-worker.mlpackage/Manifest.json", "toy-worker.mlpackage/Data/weights/weight.bin",
                                      "reports/gates.json", "reports/verify.json", "reports/convert.json",
                                      "golden/parity-decode.npz"}
    assert manifest["gates"][0]["metric"] == "eval.json_validity"


@pytest.mark.parametrize("kw, message", [
    ({"passed": False}, "hard gates did not pass: eval.json_validity"),
    ({"gate_hash": "another-package"}, "the gates passed for package another-package"),
    ({"verify_ok": False}, "contract mismatch"),
])
def test_publish_refuses_unless_gates_passed_for_exactly_this_package(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(publish.PublishRefused, match=message):
        _publish(tmp_path, **kw)


def test_install_is_whole_and_swaps_current_atomically(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in")
    manifest = _publish(tmp_path)
    dest = tmp_path / "dest"
    first = install(dest, manifest, publish.release_files(inputs))
    assert (dest / "current").resolve() == first.resolve()
    assert oct(first.stat().st_mode & 0o777) == "0o755"
    for rel, digest in json.loads(manifest.read_text())["files"].items():
        assert file_sha256(dest / "current" / rel) == digest

    # a second release: a file changed after its manifest was written is refused, and the old
    # release stays current and whole
    inputs2 = _inputs(tmp_path / "in2", weight=b"weights-v2")
    manifest2 = tmp_path / "manifest2.json"
    data = json.loads(manifest.read_text())
    data["package_hash"] = "pkg-hash-2"
    manifest2.write_text(json.dumps(data))  # still lists v1's weight digest
    with pytest.raises(ReleaseError, match="weight.bin changed since the manifest"):
        install(dest, manifest2, publish.release_files(inputs2))
    assert os.readlink(dest / "current") == f"releases/{first.name}"
    assert [p.name for p in (dest / "releases").iterdir() if not p.name.startswith(".")] == [first.name]

    # with a correct manifest the new release goes in and current moves to it
    data["files"] = {rel: file_sha256(src) for rel, src in publish.release_files(inputs2).items()}
    manifest2.write_text(json.dumps(data))
    second = install(dest, manifest2, publish.release_files(inputs2))
    assert second != first and (dest / "current").resolve() == second.resolve()
    assert first.is_dir(), "earlier releases are kept"


def test_install_refuses_paths_outside_the_release(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "n", "version": "1", "package_hash": "h" * 12, "files": {"../evil": file_sha256(src)}}))
    with pytest.raises(ReleaseError, match="refusing release path"):
        install(tmp_path / "dest", manifest, {"../evil": src})
    assert not (tmp_path / "evil").exists()
