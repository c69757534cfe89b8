"""The verify and parity jobs on a real toy package (tests/verify/conftest.py builds it once)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compiler.reading.loader import load_file
from runtime.coreml.package import function_ops, load_spec, write_spec
from runtime.jobs import parity as parity_job
from runtime.jobs import verify as verify_job
from runtime.verify.gate import verify
from runtime.verify.observe import observe
from tests.runtime.helpers import SPECS, Ctx
from tests.runtime.toy_exports import PROVENANCE, toy

pytestmark = pytest.mark.slow


def _params():
    return toy().job("verify").job.params


def _tokenizer(pkg) -> Path:
    return pkg.package.parents[1] / "tokenizer"


def _ctx(tmp_path: Path, spec_hash: str = PROVENANCE["spec"]["hash"]) -> Ctx:
    provenance = {**PROVENANCE, "spec": {**PROVENANCE["spec"], "hash": spec_hash}}
    ctx = Ctx(work_dir=tmp_path, provenance=provenance)
    ctx.spec_file = SPECS / "toy.yaml"
    return ctx


def test_the_good_package_passes_and_its_observed_contract_is_complete(toy_package, tmp_path: Path) -> None:
    inputs = {"convert": {"package": toy_package.package}, "tokenizer": {"tokenizer": _tokenizer(toy_package)}}
    metrics = verify_job.run(_params(), inputs, tmp_path, _ctx(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert metrics["_verdict"]["ok"], report["mismatches"]
    assert report["passed"] and report["not_checked"] == []
    obs = report["observed"]
    assert set(obs["functions"]) == {"prefill_64", "prefill_128", "prefill_256", "decode", "verify"}
    assert obs["default_function"] == "prefill_64" and obs["problems"] == []
    plan = {q.module: q for q in _params().quantization}
    for fn in obs["functions"].values():
        assert fn["opset"] == "CoreML8"
        got = {c["module"]: c for c in fn["compressed"]}
        assert set(got) == {m for m, q in plan.items() if q.dtype != "none"}
        assert got["layers.0.mlp.up_proj"]["storage_dtype"] == "int4" and got["layers.0.mlp.up_proj"]["bits"] == 4
        assert (got["layers.0.mlp.up_proj"]["granularity"], got["layers.0.mlp.up_proj"]["block_size"]) == ("per_block", 32)
        assert got["lm_head"]["granularity"] == "per_channel"
        assert {d["module"] for d in fn["dense"] if d["module"]} >= {"embed_tokens", "norm"}
        assert all(r["dtype"] == "fp32" for region in fn["islands"].values() for r in region)
        assert {r["type"] for r in fn["islands"]["norm"]} >= {"pow", "reduce_mean", "rsqrt", "mul"}
    # weights are stored once: every weight blob is shared by all four functions
    assert obs["blobs"]["shared_by_all"] >= len(plan) and obs["metadata"]["modelspec.spec_hash"] == PROVENANCE["spec"]["hash"]


def test_a_foreign_spec_hash_is_reported_at_the_spec_line(toy_package, tmp_path: Path) -> None:
    inputs = {"convert": {"package": toy_package.package}, "tokenizer": {"tokenizer": _tokenizer(toy_package)}}
    metrics = verify_job.run(_params(), inputs, tmp_path, _ctx(tmp_path, spec_hash="another-spec"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert not metrics["_verdict"]["ok"] and "spec hash (foreign" in metrics["_verdict"]["message"]
    (m,) = report["mismatches"]
    version_line = next(i for i, line in enumerate((SPECS / "toy.yaml").read_text().splitlines(), 1) if line.startswith("version:"))
    assert m["where"].startswith(f"{SPECS / 'toy.yaml'}:{version_line}:"), m


def test_a_weight_reference_outside_the_file_is_a_problem_not_a_read(toy_package, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(toy_package.package, bad)
    spec = load_spec(bad)
    fn = spec.mlProgram.functions["decode"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue":
            op.attributes["val"].blobFileValue.offset = 1 << 40
            break
    write_spec(bad, spec)
    report = verify(_params(), bad, spec_hash=PROVENANCE["spec"]["hash"], tokenizer=_tokenizer(toy_package),
                    doc=load_file(str(SPECS / "toy.yaml")))
    assert not report["passed"]
    assert any(m["check"] == "integrity" and "function 'decode'" in m["what"] for m in report["mismatches"]), report["mismatches"]


def test_the_islands_of_the_observed_program_are_exactly_the_norm_ops(toy_package) -> None:
    params = _params()
    obs = observe(toy_package.package, [q.module for q in params.quantization], params.precision.island_modules)
    ops = function_ops(load_spec(toy_package.package), "prefill_64")
    softmax = [op for op in ops if op.type == "softmax"]
    assert softmax and obs["functions"]["prefill_64"]["op_output_dtypes"]["softmax"] == {"fp32": len(softmax)}
    for module, region in obs["functions"]["prefill_64"]["islands"].items():
        # RMSNorm: cast in, x^2, mean, + eps, rsqrt, x * r, * weight; all fp32
        assert sorted(r["type"] for r in region) == ["add", "cast", "mul", "mul", "pow", "reduce_mean", "rsqrt"], (module, region)


@pytest.mark.parametrize("job_id", ["parity-prefill-64", "parity-decode"])
def test_parity_job_passes_its_checks_and_writes_golden_vectors(toy_package, tmp_path: Path, job_id: str) -> None:
    params = toy().job(job_id).job.params
    inputs = {"convert": {"package": toy_package.package}, "qat": {"checkpoint": toy_package.checkpoint}}
    metrics = parity_job.run(params, inputs, tmp_path, _ctx(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert metrics["_verdict"]["ok"], report["checks"]
    names = {c["name"] for c in report["checks"]}
    assert {"interpreter_covers_every_op", "weights_match_checkpoint", "causality", "no_nonfinite_intermediates"} <= names
    assert ("prefill_then_decode" in names) == (params.function.role == "prefill")
    assert report["metrics"]["snr_db"]["value"] >= 55.0 and report["metrics"]["top1_agreement"]["value"] >= 0.99
    assert report["metrics"]["coreml_snr_db"].get("not_run")
    golden = np.load(tmp_path / "golden.npz")
    assert {f"sample{i}_input_ids" for i in range(params.samples)} <= set(golden.files)
    n = int(golden["sample0_n"])
    assert golden["sample0_torch_logits"].shape == golden["sample0_interpreter_logits"].shape == (n, 512)


@pytest.fixture(scope="module")
def enumerated_package(tmp_path_factory: pytest.TempPathFactory):
    from runtime.jobs import convert
    from tests.runtime.toy_exports import export_all, save_checkpoint

    compiled = toy("export.coreml.packaging=enumerated")
    root = tmp_path_factory.mktemp("enumerated")
    checkpoint = save_checkpoint(compiled, root / "checkpoint")
    inputs = export_all(compiled, checkpoint, root)
    (root / "out").mkdir()
    convert.run(compiled.job("convert").job.params, inputs, root / "out", Ctx(work_dir=root, provenance=PROVENANCE))
    return compiled, root / "out" / f"{compiled.spec.name}.mlpackage", checkpoint, root / "tokenizer"


def test_an_enumerated_prefill_is_verified_and_checked_per_shape(enumerated_package, tmp_path: Path) -> None:
    compiled, package, checkpoint, tokenizer = enumerated_package
    report = verify(compiled.job("verify").job.params, package, spec_hash=PROVENANCE["spec"]["hash"], tokenizer=tokenizer)
    assert report["passed"], report["mismatches"]
    (prefill,) = [f for f in compiled.job("verify").job.params.functions if f.role == "prefill"]
    assert len(prefill.seq_lens) == 3
    observed = {t["name"]: t for t in report["observed"]["functions"][prefill.name]["inputs"]}
    assert observed["input_ids"]["enumerated_shapes"] == [[1, n] for n in prefill.seq_lens]
    job = next(pj for pj in compiled.jobs if pj.job.kind == "parity" and pj.job.params.function.role == "prefill")
    metrics = parity_job.run(job.job.params, {"convert": {"package": package}, "qat": {"checkpoint": checkpoint}}, tmp_path,
                             _ctx(tmp_path))
    rep = json.loads((tmp_path / "report.json").read_text())
    assert metrics["_verdict"]["ok"], rep["checks"]
    assert set(rep["by_shape"]) == {str(n) for n in prefill.seq_lens}
    assert {f"causality[length {n}]" for n in prefill.seq_lens} <= {c["name"] for c in rep["checks"]}
    assert rep["metrics"]["snr_db"]["value"] == min(s["snr_db"] for s in rep["by_shape"].values())


def test_an_enumerated_prefill_runs_only_the_lengths_the_spec_names(enumerated_package, tmp_path: Path) -> None:
    """export.parity.lengths: [64, 256] on one enumerated prefill function: those two lengths run
    (checked per shape), 128 is named as not run; the plan's parameters carry the subset."""
    compiled, package, checkpoint, _ = enumerated_package
    job = next(pj for pj in compiled.jobs if pj.job.kind == "parity" and pj.job.params.function.role == "prefill")
    params = job.job.params.model_copy(update={"lengths": [64, 256], "samples": 2})
    metrics = parity_job.run(params, {"convert": {"package": package}, "qat": {"checkpoint": checkpoint}}, tmp_path,
                             _ctx(tmp_path))
    rep = json.loads((tmp_path / "report.json").read_text())
    assert metrics["_verdict"]["ok"], rep["checks"]
    assert set(rep["by_shape"]) == {"64", "256"} and rep["lengths_not_run"] == [128]
    assert {c["name"] for c in rep["checks"]} >= {"causality[length 64]", "causality[length 256]"}
    assert not any("length 128" in c["name"] for c in rep["checks"])


def test_a_position_subset_compares_the_same_logits_at_fewer_positions(toy_package, tmp_path: Path) -> None:
    """positions: 8 keeps 8 evenly spaced positions per sample (first and last real token among
    them), and the logits kept there are exactly the full run's at those positions."""
    params = toy().job("parity-prefill-128").job.params.model_copy(update={"samples": 2})
    inputs = {"convert": {"package": toy_package.package}, "qat": {"checkpoint": toy_package.checkpoint}}
    full_dir, sub_dir = tmp_path / "full", tmp_path / "subset"
    full_dir.mkdir(), sub_dir.mkdir()
    assert parity_job.run(params, inputs, full_dir, _ctx(full_dir))["_verdict"]["ok"]
    sub = parity_job.run(params.model_copy(update={"positions": 8}), inputs, sub_dir, _ctx(sub_dir))
    report = json.loads((sub_dir / "report.json").read_text())
    assert sub["_verdict"]["ok"], report["checks"]
    full, part = np.load(full_dir / "golden.npz"), np.load(sub_dir / "golden.npz")
    for i in range(2):
        n, pos = int(part[f"sample{i}_n"]), part[f"sample{i}_positions"]
        assert len(pos) == 8 and pos[0] == 0 and pos[-1] == n - 1 and np.all(np.diff(pos) > 0)
        for kind in ("interpreter", "interpreter_fp16", "torch"):
            np.testing.assert_array_equal(part[f"sample{i}_{kind}_logits"], full[f"sample{i}_{kind}_logits"][pos])
    assert report["metrics"]["snr_db"]["n"] == 16 and [s["positions"] for s in report["samples"]] == [8, 8]


def test_a_large_dense_constant_is_a_mismatch_unless_it_is_all_zeros() -> None:
    """coremltools gives a `linear` without bias a zero bias: at a real vocabulary (32768) the
    lm_head's is past the large-constant bar, and must not read as a weight left unquantized."""
    from runtime.verify.check import LARGE_DENSE_ELEMENTS, _quantization

    params = toy().job("verify").job.params

    def dense(name: str, zeros: bool) -> dict:
        return {"name": name, "dtype": "fp16", "shape": [32768], "elements": 32768, "module": None, "blob": None,
                "zeros": zeros}

    assert 32768 >= LARGE_DENSE_ELEMENTS
    obs = {"functions": {"prefill_64": {"compressed": [], "dense": [dense("linear_9_bias_0_to_fp16", True),
                                                                     dense("stray_table_to_fp16", False)]}}}
    flagged = [m.what for m in _quantization(params, obs) if "large dense constant" in m.what]
    assert len(flagged) == 1 and "stray_table_to_fp16" in flagged[0]
