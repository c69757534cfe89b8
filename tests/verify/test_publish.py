"""The publish job's refusals, the release it describes (tokenizer, runtime config, chat template) and
the atomic release install (runtime/jobs/publish.py, runtime/jobs/publish_config.py, runtime/release.py)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

from compiler.output.build import compile_one
from runtime.coreml.describe import feature_descriptions
from runtime.hashing import file_sha256, tree_sha256
from runtime.jobs import publish
from runtime.release import ReleaseError, install
from tests.runtime.helpers import SPECS, Ctx
from tests.verify.test_broken_packages import _cli, base  # noqa: F401 (fixture: the good reduced-toy package, built once)

# raised inside torch.export.load and coremltools while the real package is built, not by this code
BUILD_WARNINGS = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
                  pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY:DeprecationWarning"),
                  pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]
PROVENANCE = {"spec": {"name": "toy-worker", "version": "1.0.0", "hash": "spec-hash"},
              "upstream": {"gates": {"fingerprint": "fp-gates", "key": "k"}, "convert": {"fingerprint": "fp-convert", "key": "k"}}}
TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


@lru_cache(maxsize=None)
def _toy():
    return compile_one(str(SPECS / "toy.yaml"), [])


def _params() -> PublishParams:
    return _toy().job("publish").job.params


def tokenizer(folder: Path, *, adds_bos: bool = False, template: str | None = None, template_in_config: bool = False) -> Path:
    """A small real tokenizer folder with the toy's special tokens (tokenizer.json loads with `tokenizers`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    special = _params().special_tokens
    vocab = {t.text: t.id for t in special.values()} | {"hello": 9, "world": 10, "[unk]": 11}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[unk]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", special["bos"].id)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    if template is not None and template_in_config:
        config["chat_template"] = template
    elif template is not None:
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, sort_keys=True), encoding="utf-8")
    return folder


def _convert_functions() -> dict:
    """The convert report's `functions` for the toy's contract functions (as the convert job writes them)."""
    params = _toy().job("convert").job.params
    out = {}
    for fn in params.functions:
        io = {kind: [{"name": t.name, "dtype": t.dtype, "shape": t.shape, "enumerated_shapes": t.enumerated_shapes}
                     for t in getattr(fn, kind)] for kind in ("inputs", "outputs", "states")}
        out[fn.name] = {"role": fn.role, "seq_lens": fn.seq_lens,
                        "package": io | {"descriptions": feature_descriptions(fn, params.special_tokens)}}
    return out


def _inputs(root: Path, *, passed: bool = True, gate_hash: str = "pkg-hash", verify_ok: bool = True,
            weight: bytes = b"weights-v1", stamped: str | None = None, **tok) -> dict[str, dict[str, Path]]:
    pkg = root / "convert" / "toy-worker.mlpackage"
    (pkg / "Data" / "weights").mkdir(parents=True, exist_ok=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "weights" / "weight.bin").write_bytes(weight)
    tok_dir = tokenizer(root / "tokenizer" / "tokenizer", **tok)
    reports = {
        "gates": {"passed": passed, "package_hash": gate_hash, "hard_not_passed": [] if passed else ["eval.json_validity"],
                  "gates": [{"metric": "eval.json_validity", "outcome": "pass" if passed else "fail"}]},
        "verify": {"passed": verify_ok, "mismatches": [] if verify_ok else [{"what": "x"}]},
        "convert": {"package": pkg.name, "canonical_hash": "pkg-hash", "size_mb": 0.1, "default_function": "prefill_64",
                    "compute_units": "all", "target": "macOS15", "functions": _convert_functions(),
                    "model_metadata": {"author": "modelspec", "license": "unspecified", "version": "1.0.0",
                                       "short_description": "Tiny tool-calling worker."},
                    "metadata": {"modelspec.fingerprints": json.dumps({"qat": "fp-qat"}),
                                 "modelspec.tokenizer_sha256": stamped or tree_sha256(tok_dir)}},
    }
    out: dict[str, dict[str, Path]] = {}
    for job, rep in reports.items():
        (root / job).mkdir(parents=True, exist_ok=True)
        (root / job / "report.json").write_text(json.dumps(rep))
        out[job] = {"report": root / job / "report.json"}
    out["convert"]["package"] = pkg
    out["tokenizer"] = {"tokenizer": tok_dir}
    (root / "parity-decode").mkdir(exist_ok=True)
    (root / "parity-decode" / "golden.npz").write_bytes(b"golden")
    out["parity-decode"] = {"report": root / "gates" / "report.json", "golden": root / "parity-decode" / "golden.npz"}
    return out


def _publish(tmp_path: Path, **kw) -> Path:
    inputs = _inputs(tmp_path / "in", **kw)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    publish.run(_params(), inputs, out, Ctx(provenance=PROVENANCE))
    return out / "manifest.json"


def _release_inputs(tmp_path: Path) -> dict[str, dict[str, Path]]:
    """What `modelspec publish` hands release_files: the publish job's inputs plus its own outputs."""
    return _inputs(tmp_path / "in") | {"publish": {"app": tmp_path / "out" / "app", "manifest": tmp_path / "out" / "manifest.json"}}


def test_manifest_hashes_every_release_file_and_carries_provenance(tmp_path: Path) -> None:
    manifest = json.loads(_publish(tmp_path).read_text())
    assert manifest["package_hash"] == "pkg-hash" and manifest["spec_hash"] == "spec-hash"
    assert manifest["fingerprints"]["package"] == {"qat": "fp-qat"}
    assert set(manifest["files"]) == {"toy-worker.mlpackage/Manifest.json", "toy-worker.mlpackage/Data/weights/weight.bin",
                                      "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "runtime_config.json",
                                      "reports/gates.json", "reports/verify.json", "reports/convert.json",
                                      "golden/parity-decode.npz"}
    assert manifest["files"]["runtime_config.json"] == file_sha256(tmp_path / "out" / "app" / "runtime_config.json")
    assert manifest["files"]["tokenizer/tokenizer.json"] == file_sha256(tmp_path / "in" / "tokenizer" / "tokenizer" / "tokenizer.json")
    assert manifest["tokenizer_sha256"] == tree_sha256(tmp_path / "in" / "tokenizer" / "tokenizer")
    assert manifest["runtime_config"] == "runtime_config.json" and manifest["chat_template"] is None
    assert manifest["gates"][0]["metric"] == "eval.json_validity"


def test_runtime_config_is_what_an_app_needs_to_drive_the_package(tmp_path: Path) -> None:
    _publish(tmp_path)
    config = json.loads((tmp_path / "out" / "app" / "runtime_config.json").read_text())
    io = json.loads((SPECS.parent / "generated" / "toy-worker" / "contracts" / "io.json").read_text())
    tokens = json.loads((SPECS.parent / "generated" / "toy-worker" / "contracts" / "tokens.json").read_text())
    assert (config["name"], config["version"], config["role"], config["format"]) == ("toy-worker", "1.0.0", "worker", 1)
    assert config["package"] == "toy-worker.mlpackage" and config["package_hash"] == "pkg-hash"
    assert config["default_function"] == io["default_function"] == "prefill_64"
    assert config["compute_units"] == "all" and config["target"] == "macOS15"
    assert sorted(config["functions"]) == sorted(io["functions"])
    for name, fn in io["functions"].items():
        got = config["functions"][name]
        assert got["role"] == fn["role"] and got["seq_lens"] == fn["seq_lens"]
        for kind in ("inputs", "outputs", "states"):
            assert [(t["name"], t["dtype"], t["shape"]) for t in got[kind]] == [(t["name"], t["dtype"], t["shape"]) for t in fn[kind]]
            assert all(t["description"] for t in got[kind]), (name, kind)
    assert config["prefill_functions"] == [{"function": f"prefill_{n}", "length": n} for n in (64, 128, 256)]
    assert config["decode_function"] == "decode"
    assert config["cache"] == {"kind": "state", "length": 256, "shape": [2, 1, 2, 256, 32], "dtype": "fp16",
                               "axes": ["layers", "batch", "kv_heads", "positions", "head_dim"], "names": ["key_cache", "value_cache"]}
    assert config["max_tokens"] == 256 and config["vocab_size"] == tokens["vocab_size"] == 512
    assert config["special_tokens"] == tokens["special_tokens"]
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    # eos ends the answer; a worker's tool_call_end hands the call to the app (as the eval job stops there)
    assert config["stop_token_ids"] == [2, 6] and [s["name"] for s in config["stop_tokens"]] == ["eos", "tool_call_end"]
    assert "<tool_result>result</tool_result>" in config["stop_tokens"][1]["meaning"]
    assert config["prompt"] == {"prepend_bos": True, "add_special_tokens": False, "tokenizer_adds_bos": False}
    assert config["tokenizer"] == {"folder": "tokenizer", "sha256": tree_sha256(tmp_path / "in" / "tokenizer" / "tokenizer"),
                                   "files": ["tokenizer.json", "tokenizer_config.json"]}
    assert config["chat_template"] is None
    assert (config["author"], config["license"]) == ("modelspec", "unspecified")
    assert any("bos_token_id (1) first" in step for step in config["steps"])


def test_a_tokenizer_that_adds_bos_itself_is_said_so(tmp_path: Path) -> None:
    _publish(tmp_path, adds_bos=True)
    config = json.loads((tmp_path / "out" / "app" / "runtime_config.json").read_text())
    assert config["prompt"]["tokenizer_adds_bos"] is True and "do not add it twice" in config["steps"][0]


@pytest.mark.parametrize("in_config", [False, True], ids=["chat_template.jinja", "tokenizer_config.json"])
def test_the_chat_template_ships_beside_the_package(tmp_path: Path, in_config: bool) -> None:
    manifest = json.loads(_publish(tmp_path, template=TEMPLATE, template_in_config=in_config).read_text())
    app = tmp_path / "out" / "app"
    assert (app / "chat_template.jinja").read_text() == TEMPLATE
    assert json.loads((app / "runtime_config.json").read_text())["chat_template"] == "chat_template.jinja"
    assert manifest["chat_template"] == "chat_template.jinja"
    assert manifest["files"]["chat_template.jinja"] == file_sha256(app / "chat_template.jinja")


def test_publish_refuses_a_tokenizer_that_is_not_the_packages(tmp_path: Path) -> None:
    with pytest.raises(publish.PublishRefused, match="the package was built with tokenizer 0{64}"):
        _publish(tmp_path, stamped="0" * 64)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("kw, message", [
    ({"passed": False}, "hard gates did not pass: eval.json_validity"),
    ({"gate_hash": "another-package"}, "the gates passed for package another-package"),
    ({"verify_ok": False}, "contract mismatch"),
])
def test_publish_refuses_unless_gates_passed_for_exactly_this_package(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(publish.PublishRefused, match=message):
        _publish(tmp_path, **kw)


def test_install_is_whole_and_swaps_current_atomically(tmp_path: Path) -> None:
    manifest = _publish(tmp_path)
    inputs = _release_inputs(tmp_path)
    dest = tmp_path / "dest"
    first = install(dest, manifest, publish.release_files(inputs))
    assert (dest / "current").resolve() == first.resolve()
    assert oct(first.stat().st_mode & 0o777) == "0o755"
    for rel, digest in json.loads(manifest.read_text())["files"].items():
        assert file_sha256(dest / "current" / rel) == digest
    # beside the package: the tokenizer the package was built with, and the app's runtime config
    assert tree_sha256(dest / "current" / "tokenizer") == json.loads(manifest.read_text())["tokenizer_sha256"]
    assert json.loads((dest / "current" / "runtime_config.json").read_text())["package"] == "toy-worker.mlpackage"

    # a second release: a file changed after its manifest was written is refused, and the old
    # release stays current and whole
    inputs2 = _inputs(tmp_path / "in2", weight=b"weights-v2") | {"publish": inputs["publish"]}
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


# ---- a real package: the release's runtime config and `modelspec verify` of a release -----------

def _install_release(base, dest: Path) -> Path:  # noqa: ANN001
    """The good package and its tokenizer installed as a release, as `modelspec publish` lays it out."""
    from runtime.coreml.package import canonical_hash

    reports = dest.parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for job in ("gates", "verify"):
        (reports / f"{job}.json").write_text(json.dumps({"passed": True}))
    inputs = {"convert": {"package": base.good, "report": base.good.parent / "report.json"},
              "tokenizer": {"tokenizer": base.tokenizer},
              "gates": {"report": reports / "gates.json"}, "verify": {"report": reports / "verify.json"}}
    files = publish.release_files(inputs)
    manifest = {"name": base.compiled.spec.name, "version": base.compiled.spec.version, "package_hash": canonical_hash(base.good),
                "tokenizer_sha256": tree_sha256(base.tokenizer), "files": {rel: file_sha256(src) for rel, src in files.items()}}
    (reports / "manifest.json").write_text(json.dumps(manifest))
    return install(dest, reports / "manifest.json", files)


@pytest.mark.slow
@BUILD_WARNINGS[0]
@BUILD_WARNINGS[1]
@BUILD_WARNINGS[2]
def test_runtime_config_from_a_real_convert_report_carries_the_packages_descriptions(base, tmp_path: Path) -> None:  # noqa: ANN001
    from runtime.coreml.package import load_spec
    from runtime.jobs.publish_config import runtime_config

    convert = json.loads((base.good.parent / "report.json").read_text())
    params = base.compiled.job("publish").job.params
    tok = tokenizer(tmp_path / "tokenizer")
    config = runtime_config(params, convert, tok, tree_sha256(tok), False)
    spec = load_spec(base.good)
    assert sorted(config["functions"]) == sorted(fd.name for fd in spec.description.functions) == ["decode", "prefill_64"]
    for fd in spec.description.functions:
        for kind, features in (("inputs", fd.input), ("outputs", fd.output), ("states", fd.state)):
            assert [(t["name"], t["description"]) for t in config["functions"][fd.name][kind]] == \
                   [(f.name, f.shortDescription) for f in features], (fd.name, kind)
    assert config["default_function"] == spec.description.defaultFunctionName == "prefill_64"
    assert config["cache"]["kind"] == "state" and config["cache"]["length"] == base.compiled.spec.shapes.decode.cache_len
    assert config["description"] == base.compiled.spec.description and config["version"] == base.compiled.spec.version


@pytest.mark.slow
@BUILD_WARNINGS[0]
@BUILD_WARNINGS[1]
@BUILD_WARNINGS[2]
def test_verify_checks_the_release_tokenizer_against_the_package(base, tmp_path: Path) -> None:  # noqa: ANN001
    release = _install_release(base, tmp_path / "releases")
    package = tmp_path / "releases" / "current" / base.good.name
    args = [str(base.spec), str(package), "--no-parity", "--workdir", str(tmp_path / "store")]
    out = _cli(*args, "--json", str(tmp_path / "good.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[release] tokenizer: ok" in out.stderr and "[release] files: ok" in out.stderr
    checks = json.loads((tmp_path / "good.json").read_text())["release"]["checks"]
    assert [c["name"] for c in checks] == ["tokenizer", "tokenizer_recorded", "files"] and all(c["passed"] for c in checks)

    # a tokenizer swapped in the release: not the one the package was built with -> exit 1, said plainly
    tok = release / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")
    out = _cli(*args, "--json", str(tmp_path / "bad.json"), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "[release] tokenizer: FAIL" in out.stderr and "this release's tokenizer is not the package's" in out.stderr
    assert "[release] files: FAIL" in out.stderr and "tokenizer/tokenizer.json" in out.stderr
    assert f"FAIL: {base.good.name}" in out.stderr and "Traceback" not in out.stderr
    report = json.loads((tmp_path / "bad.json").read_text())
    assert not report["passed"] and not {c["name"]: c["passed"] for c in report["release"]["checks"]}["tokenizer"]

    # --release names the folder explicitly; one that is not a release is bad input
    out = _cli(str(base.spec), str(base.good), "--no-parity", "--release", str(tmp_path), "--workdir", str(tmp_path / "store"),
               cwd=tmp_path)
    assert out.returncode == 2 and "is not a release folder" in out.stderr, out.stderr
