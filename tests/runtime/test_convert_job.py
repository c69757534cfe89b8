"""The convert job: a toy QAT student through export and conversion into one multifunction package."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.hashing import tree_sha256
from runtime.jobs import convert
from runtime.jobs.convert import ConvertJobError, export_inputs

from .helpers import Ctx
from .toy_exports import (export_all, export_inputs_of, locked, qat_student, run_convert,
                          save_checkpoint, toy, toy_build)

pytestmark = [  # warnings raised inside torch.export.load and coremltools, not by this code
    pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]
IO = Path(__file__).resolve().parents[2] / "generated" / "toy-worker" / "contracts" / "io.json"
ISLAND_MODULES = ["layers.0.input_layernorm", "layers.0.post_attention_layernorm", "layers.1.input_layernorm",
                  "layers.1.post_attention_layernorm", "norm"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The toy's shared build (tests/runtime/toy_exports.toy_build: checkpoint, exports, one
    conversion) and a second conversion of the same exports, built once per session."""
    root = toy_build(tmp_path_factory)
    inputs = export_inputs_of(root)
    with locked(root / ".lock-second"):
        if not (root / "convert-1" / "metrics.json").exists():
            shutil.rmtree(root / "convert-1", ignore_errors=True)
            metrics = run_convert(toy(), inputs, root / "convert-1")
            (root / "convert-1" / "metrics.json").write_text(json.dumps(metrics))
    metrics = [json.loads((root / d / "metrics.json").read_text()) for d in ("convert", "convert-1")]
    return {"root": root, "checkpoint": root / "checkpoint", "inputs": inputs, "metrics": metrics}


@pytest.fixture(scope="module")
def converted(exported: dict) -> dict:
    from runtime.coreml.package import inspect

    name = toy().job("convert").job.params.name
    runs = [(m, json.loads((exported["root"] / d / "report.json").read_text()), exported["root"] / d / f"{name}.mlpackage")
            for d, m in zip(("convert", "convert-1"), exported["metrics"])]
    metrics, report, package = runs[0]
    return {"metrics": metrics, "report": report, "package": package, "info": inspect(package), "runs": runs}


@pytest.mark.slow
def test_functions_states_and_default_are_the_contracts(converted: dict) -> None:
    contract = json.loads(IO.read_text())
    info = converted["info"]
    assert info["default_function"] == contract["default_function"] == "prefill_64"
    assert sorted(info["functions"]) == sorted(contract["functions"]) == ["decode", "prefill_128", "prefill_256", "prefill_64", "verify"]
    for name, fn in contract["functions"].items():
        got = info["functions"][name]
        for kind in ("inputs", "outputs", "states"):
            assert [{k: t[k] for k in ("name", "dtype", "shape")} for t in got[kind]] == \
                   [{k: t[k] for k in ("name", "dtype", "shape")} for t in fn[kind]], (name, kind)
        assert [s["name"] for s in got["states"]] == ["key_cache", "value_cache"]
        assert got["op_counts"]["read_state"] >= 2 and got["op_counts"]["write_state"] == 2


@pytest.mark.slow
def test_every_planned_weight_and_nothing_else_is_compressed_as_planned(converted: dict) -> None:
    plan = {q.module: q for q in toy().job("convert").job.params.quantization}
    planned = {m for m, q in plan.items() if q.dtype != "none"}
    for name, fn in converted["report"]["functions"].items():
        weights = fn["weights"]
        assert set(weights) == set(plan) and weights["embed_tokens"] == {"op": None}
        compressed = converted["info"]["functions"][name]["compressed"]
        assert len(compressed) == len(planned) == 15 and fn["dequant_ops"] == {"constexpr_blockwise_shift_scale": 15}
        for module in planned:
            q, got = plan[module], compressed[weights[module]["name"]]
            blocks = 1 if q.granularity == "per_channel" else q.shape[1] // q.block_size
            assert got == {"op": "constexpr_blockwise_shift_scale", "dtype": q.dtype, "scale_shape": [q.shape[0], blocks]}, module
    per_dtype = Counter(plan[m].dtype for m in planned)
    assert per_dtype == {"int8": 9, "int4": 6}


@pytest.mark.slow
def test_precision_islands_compute_in_fp32_and_the_rest_in_fp16(converted: dict) -> None:
    from runtime.coreml.package import function_ops, load_spec, op_dtype, op_name

    spec = load_spec(converted["package"])
    for name, fn in converted["report"]["functions"].items():
        ops = {op_name(op): op for op in function_ops(spec, name)}
        kept = fn["fp32_ops"]
        # the spec's islands plus the built-in one: the RoPE angle computation (runtime/coreml/scopes.py)
        assert {k["module"] for k in kept if k["reason"].startswith("module:")} == set(ISLAND_MODULES) | {"rotary_emb"}
        assert Counter(k["type"] for k in kept if k["reason"] == "op:softmax") == {"softmax": 2}
        for k in kept:
            assert op_dtype(ops[k["op"]]) == "fp32", k
        by_type = Counter((op.type, op_dtype(op)) for op in ops.values())
        assert by_type[("linear", "fp16")] == 15 and by_type[("linear", "fp32")] == 0
        assert by_type[("softmax", "fp32")] == 2 and by_type[("rsqrt", "fp32")] == 5 and by_type[("rsqrt", "fp16")] == 0
        assert by_type[("cos", "fp32")] == by_type[("sin", "fp32")] == 1 and by_type[("cos", "fp16")] == 0


@pytest.mark.slow
def test_metadata_survives_save_multifunction(converted: dict, exported: dict) -> None:
    meta = converted["info"]["metadata"]
    params = toy().job("convert").job.params
    assert meta["modelspec.spec_hash"] == "spec-hash-for-tests"
    assert meta["modelspec.tokenizer_sha256"] == tree_sha256(exported["inputs"]["tokenizer"]["tokenizer"])
    assert json.loads(meta["modelspec.special_tokens"]) == {k: v.id for k, v in params.special_tokens.items()}
    fingerprints = json.loads(meta["modelspec.fingerprints"])
    assert fingerprints["convert"] == "fp-convert" and fingerprints["qat"] == "fp-qat"
    assert {"export-prefill-64", "export-decode", "tokenizer"} <= set(fingerprints)
    assert json.loads(meta["modelspec.versions"])["coremltools"] == "9.0"
    assert not any("conversion_date" in k for k in meta)


@pytest.mark.slow
def test_standard_metadata_and_a_description_of_every_feature(converted: dict) -> None:
    """What Xcode's model viewer shows: author, license, version, short description, and one line per
    input, output and state of every function (read back with coremltools and from the proto)."""
    import coremltools as ct

    from runtime.coreml.package import load_spec

    spec = toy().spec
    model = ct.models.MLModel(str(converted["package"]), skip_model_load=True)
    assert (model.author, model.license) == ("modelspec", "unspecified")  # the documented defaults
    assert (model.version, model.short_description) == (spec.version, spec.description) == ("1.0.0", spec.description)
    assert converted["report"]["model_metadata"] == {"author": "modelspec", "license": "unspecified", "version": "1.0.0",
                                                     "short_description": spec.description}
    desc = load_spec(converted["package"]).description
    texts = {fd.name: {f.name: f.shortDescription for f in [*fd.input, *fd.output, *fd.state]} for fd in desc.functions}
    assert sorted(texts) == ["decode", "prefill_128", "prefill_256", "prefill_64", "verify"]
    assert all(text for fn in texts.values() for text in fn.values()), texts
    assert texts["prefill_64"]["input_ids"].startswith("Token ids, int32 [1, 64]: bos (1) first")
    assert "right-padded with pad (0) to 64" in texts["prefill_64"]["input_ids"]
    assert texts["prefill_64"]["logits"].startswith("Next-token scores, fp16 [1, 64, 512]")
    assert texts["decode"]["position"].startswith("Position of input_ids in the sequence, int32 [1]") and "below 256" in texts["decode"]["position"]
    assert texts["decode"]["key_cache"].startswith("KV cache keys (state, shared by prefill and decode), fp16 [2, 1, 2, 256, 32]")
    assert texts["prefill_256"]["value_cache"].endswith("this function writes positions 0..255; a new state per sequence.")
    for name, fn in converted["report"]["functions"].items():  # the report carries them for the release's runtime config
        got = fn["package"]["descriptions"]
        assert {**got["inputs"], **got["outputs"], **got["states"]} == texts[name]
        assert fn["role"] == {"decode": "decode", "verify": "verify"}.get(name, "prefill")


@pytest.mark.slow
def test_describing_a_package_is_deterministic_and_takes_the_specs_metadata(converted: dict, tmp_path: Path) -> None:
    import shutil

    from compiler.planning.params import PackageMetadataP
    from runtime.coreml.describe import describe_package
    from runtime.coreml.package import canonical_hash, inspect

    params = toy().job("convert").job.params
    meta = PackageMetadataP(author="Acme Labs", license="Apache-2.0", version="2.1.0", description="A described worker.")
    copies = []
    for i in range(2):
        copy = tmp_path / f"copy-{i}" / converted["package"].name
        shutil.copytree(converted["package"], copy)
        describe_package(copy, meta, params.functions, params.default_function, params.special_tokens)
        copies.append(copy)
    assert tree_sha256(copies[0]) == tree_sha256(copies[1])
    assert canonical_hash(copies[0]) != canonical_hash(converted["package"])  # the metadata is part of the package
    assert inspect(copies[0])["model_metadata"] == {"author": "Acme Labs", "license": "Apache-2.0", "version": "2.1.0",
                                                    "short_description": "A described worker."}
    with pytest.raises(ValueError, match="function 'decode' is not a contract function"):
        describe_package(copies[0], meta, [f for f in params.functions if f.name != "decode"], params.default_function,
                         params.special_tokens)


def test_package_metadata_comes_from_the_spec_or_the_documented_defaults(tmp_path: Path) -> None:
    from compiler.core.errors import SpecError
    from compiler.output.build import compile_one

    from .helpers import SPECS

    text = (SPECS / "toy.yaml").read_text(encoding="utf-8")
    coreml = "  coreml: {target: macOS15, compute_units: all, packaging: multifunction, decode_cache: state}\n"
    assert text.count(coreml) == 1
    (tmp_path / "data").symlink_to(SPECS / "data", target_is_directory=True)

    def params(extra: str):
        path = tmp_path / "spec.yaml"
        path.write_text(text.replace(coreml, coreml.replace("decode_cache: state}", "decode_cache: state" + extra + "}")),
                        encoding="utf-8")
        return compile_one(str(path), []).job("convert").job.params.metadata

    got = params(", metadata: {author: Acme Labs, license: Apache-2.0}")
    assert (got.author, got.license, got.version) == ("Acme Labs", "Apache-2.0", "1.0.0")
    assert got.description == toy().spec.description
    assert params(", metadata: {license: MIT}").author == "modelspec"
    default = toy().job("convert").job.params.metadata
    assert (default.author, default.license) == ("modelspec", "unspecified")
    with pytest.raises(SpecError, match="metadata"):
        params(", metadata: {author: Acme, owner: me}")


@pytest.mark.slow
def test_canonical_hash_is_stable_and_the_package_byte_identical(converted: dict) -> None:
    from runtime.coreml.package import canonical_hash

    (m1, r1, p1), (m2, r2, p2) = converted["runs"]
    assert r1["canonical_hash"] == r2["canonical_hash"] == canonical_hash(p1)
    assert tree_sha256(p1) == tree_sha256(p2)
    assert m1["size_mb"] == r1["size_mb"] and 0.1 < m1["size_mb"] <= 2.0  # the toy's package.size_mb gate


@pytest.mark.slow
def test_compressed_weights_are_the_qat_weights(exported: dict) -> None:
    """Re-quantizing the baked QAT values gives back the codes QAT trained against (fp16 scales aside)."""
    params = toy().job("convert").job.params
    decode = next(f for f in params.functions if f.name == "decode")
    model, report = convert.convert_one(decode, exported["inputs"]["export-decode"]["program"], params)
    student = qat_student(toy()).state_dict()
    ops = {op.name: op for f in model._mil_program.functions.values() for op in f.operations}
    for module, got in report["weights"].items():
        if got["op"] is None:
            continue
        op = ops[got["name"]]
        data, scale = op.inputs["data"].val.astype(np.float32), op.inputs["scale"].val.astype(np.float32)
        dequant = (data.reshape(scale.shape[0], scale.shape[1], -1) * scale[..., None]).reshape(data.shape)
        ref = student[f"{module}.weight"].numpy()
        assert np.abs(dequant - ref).max() <= 2e-3 * np.abs(ref).max(), module


@pytest.mark.slow
def test_weights_that_do_not_resolve_fail_naming_the_module(exported: dict) -> None:
    from runtime.coreml.convert_fn import convert_function
    from runtime.coreml.quantize import QuantizationError, weight_consts

    params = toy().job("convert").job.params
    decode = next(f for f in params.functions if f.name == "decode")
    ep = torch.export.load(str(exported["inputs"]["export-decode"]["program"]))
    model, _ = convert_function(ep, decode, params.precision, params.target, params.compute_units)
    bogus = params.quantization[1].model_copy(update={"module": "layers.7.self_attn.q_proj"})
    with pytest.raises(QuantizationError, match="'layers.7.self_attn.q_proj' has no weight parameter"):
        weight_consts(ep, model._mil_program, [bogus])
    wrong_shape = params.quantization[1].model_copy(update={"shape": [3, 3]})
    with pytest.raises(QuantizationError, match="expected exactly one weight const"):
        weight_consts(ep, model._mil_program, [wrong_shape])


@pytest.mark.slow
def test_enumerated_packaging_is_one_prefill_with_enumerated_shapes(tmp_path: Path) -> None:
    compiled = toy("export.coreml.packaging=enumerated")
    checkpoint = save_checkpoint(compiled, tmp_path / "checkpoint")
    inputs = export_all(compiled, checkpoint, tmp_path)
    metrics = run_convert(compiled, inputs, tmp_path / "convert")
    report = json.loads((tmp_path / "convert" / "report.json").read_text())
    package = tmp_path / "convert" / f"{compiled.job('convert').job.params.name}.mlpackage"
    from runtime.coreml.package import inspect

    info = inspect(package)
    assert sorted(info["functions"]) == ["decode", "prefill", "verify"] and info["default_function"] == "prefill"
    (ids,) = info["functions"]["prefill"]["inputs"]
    assert ids["enumerated_shapes"] == [[1, 64], [1, 128], [1, 256]] and ids["dtype"] == "int32"
    assert info["functions"]["prefill"]["descriptions"]["inputs"]["input_ids"].startswith(
        "Token ids, int32 [1, T] (T in 64, 128, 256): bos (1) first")
    assert all([s["name"] for s in f["states"]] == ["key_cache", "value_cache"] for f in info["functions"].values())
    assert all(f["dequant_ops"] == {"constexpr_blockwise_shift_scale": 15} for f in report["functions"].values())
    assert metrics["size_mb"] < 1.0  # one prefill function: fewer folded constants than three


def test_explicit_cache_contract_names_updated_caches_apart_from_inputs() -> None:
    from runtime.coreml.convert_fn import check_names

    decode = next(f for f in toy("export.coreml.decode_cache=explicit").job("convert").job.params.functions
                  if f.name == "decode")
    assert [t.name for t in decode.outputs] == ["logits", "present_keys", "present_values"]
    check_names(decode)  # CoreML forbids a name that is both an input and an output


def _fake_export(root: Path, function: str, passed: bool = True, spec_hash: str = "spec-hash-for-tests") -> dict:
    root.mkdir(parents=True)
    report = {"function": function, "contract": {"passed": passed}, "checks": [{"passed": True}],
              "provenance": {"spec": {"hash": spec_hash}}}
    (root / "report.json").write_text(json.dumps(report))
    return {"program": root / "program.pt2", "report": root / "report.json"}


def test_convert_takes_only_checked_exports_of_every_function(tmp_path: Path) -> None:
    params = toy().job("convert").job.params
    good = {f"export-{f.name}": _fake_export(tmp_path / f.name, f.name) for f in params.functions}
    assert sorted(export_inputs(good, params, "spec-hash-for-tests")) == sorted(f.name for f in params.functions)
    with pytest.raises(ConvertJobError, match="the contract's functions are"):
        export_inputs({k: v for k, v in good.items() if k != "export-decode"}, params, None)
    failed = dict(good, **{"export-decode": _fake_export(tmp_path / "failed", "decode", passed=False)})
    with pytest.raises(ConvertJobError, match="did not pass its contract and checks"):
        export_inputs(failed, params, None)
    foreign = dict(good, **{"export-decode": _fake_export(tmp_path / "foreign", "decode", spec_hash="other")})
    with pytest.raises(ConvertJobError, match="was built from spec other"):
        export_inputs(foreign, params, "spec-hash-for-tests")
