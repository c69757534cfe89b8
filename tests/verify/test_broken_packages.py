"""The broken-package battery: a good package passes the gate, and each package broken in one
realistic way is rejected by the check that owns that problem, with a message naming it.

Packages come from a reduced toy spec (one prefill length plus decode: two functions) built by the
real export and convert jobs (tests/verify/broken.py). Contract breaks (1-6) are caught by
`verify`; numeric ones (7-10) only by `parity.measure`, which runs the package in the reference
interpreter against torch. Every constructed package is built once per session, across
pytest-xdist workers too.

  1. an input renamed in one function            verify   io           names the old and new name
  2. an enumerated shape deleted                 verify   io           expected shapes list it, observed do not
  3. an MLP projection int8 per_channel          verify   quantization the module, at its spec rule
  4. a norm island converted in fp16             verify   precision    the island module and its fp16 ops
  5. no spec hash / 6. another spec's hash       verify   provenance   'spec hash (missing' / '(foreign'
  7. two layers' q_proj blobs swapped            parity   weights_match_checkpoint names both modules
  8. a mask that lets every position see all     parity   causality    'not causal'
  9. a decode that never reads its cache         parity   prefill_then_decode 'does the decode function read its cache?'
 10. an additive -1e9 mask (fp16: 0 * -inf)      parity   no_nonfinite_intermediates 'inf/NaN'; the fp16 logits are NaN
and the `modelspec verify` CLI: exit 0 (good), 1 (a broken package, the problem printed), 2 (not a package).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from compiler.output.build import compile_one
from compiler.reading.loader import load_file
from runtime.verify.gate import verify
from tests.verify import broken
from tests.runtime.toy_exports import shared_dir as _shared_dir

pytestmark = [
    pytest.mark.slow,
    # raised inside torch.export.load and coremltools, not by this code
    pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

BROKEN_SAMPLES = 2  # parity samples for a broken package: the least that still runs prefill_then_decode
SWAPPED = ("layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj")
REQUANTIZED = "layers.0.mlp.up_proj"  # int4 per_block 32 in the recipe
FP16_ISLAND = "layers.1.post_attention_layernorm"
FOREIGN_SPEC = broken.TOY  # the full toy's hash: a real spec, not this one


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The reduced spec, its checkpoint, tokenizer, checked exports and the good package."""
    root = _shared_dir(tmp_path_factory) / "broken-packages"
    with broken.once(root, "base") as build:
        if build:
            (root / "base").mkdir()
            broken.write_spec_variant(root / "base", "toy-small.yaml", broken.EDITS_SMALL)
    spec = root / "base" / "toy-small.yaml"
    compiled = compile_one(str(spec), [])
    jobs = broken.export_jobs(compiled)
    assert sorted(jobs) == ["decode", "prefill_64"], jobs
    with broken.once(root, "good") as build:
        if build:
            work = root / "good"
            ckpt = broken.checkpoint(compiled, work / "checkpoint")
            exports = {job: broken.export_checked(compiled, job, ckpt, work / job) for job in jobs.values()}
            broken.convert(compiled, exports, broken.tokenizer_folder(work), work / "convert")
    work = root / "good"
    params = {j.job.params.function.name: j.job.params for j in compiled.jobs if j.job.kind == "parity"}
    return SimpleNamespace(
        root=root, spec=spec, compiled=compiled, doc=load_file(str(spec)), jobs=jobs, parity=params,
        checkpoint=work / "checkpoint", tokenizer=work / "tokenizer",
        exports={job: {"program": work / job / "program.pt2", "report": work / job / "report.json"} for job in jobs.values()},
        good=work / "convert" / f"{compiled.spec.name}.mlpackage",
    )


def built(base: SimpleNamespace, name: str, make: Callable[[Path], Path]) -> Path:
    """`make(folder)` -> package, run once per session; the package path."""
    with broken.once(base.root, name) as build:
        if build:
            (base.root / name).mkdir()
            package = make(base.root / name)
            (base.root / name / "package.txt").write_text(str(package.relative_to(base.root / name)))
    return base.root / name / (base.root / name / "package.txt").read_text()


def _verify(base: SimpleNamespace, package: Path, compiled: Any = None, doc: Any = None) -> dict:
    compiled = compiled or base.compiled
    return verify(compiled.job("verify").job.params, package, spec_hash=compiled.spec_hash, tokenizer=base.tokenizer,
                  doc=doc or base.doc)


def _measure(base: SimpleNamespace, package: Path, function: str, samples: int = BROKEN_SAMPLES) -> tuple[dict, dict]:
    from runtime.verify.parity import measure

    pp = base.parity[function]
    return measure(package, pp.function, base.checkpoint, samples=samples, decode_steps=pp.decode_steps, seed=pp.seed,
                   lengths=pp.lengths or None, positions=pp.positions)


def _checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def _spec_line(where: str) -> str:
    """The text of the spec line a mismatch's `where` (file:line:col) points at."""
    file, line, _ = where.rsplit(":", 2)
    return Path(file).read_text(encoding="utf-8").splitlines()[int(line) - 1]


def _only(report: dict, check: str) -> list[dict]:
    """The mismatches, asserting every one is of `check` (the break is reported where it belongs)."""
    assert not report["passed"]
    assert report["mismatches"] and {m["check"] for m in report["mismatches"]} == {check}, report["mismatches"]
    return report["mismatches"]


# ---- the good package ------------------------------------------------------------------------

def test_the_good_package_passes_the_contracts_and_parity(base: SimpleNamespace) -> None:
    report = _verify(base, base.good)
    assert report["passed"], report["mismatches"]
    assert report["not_checked"] == [] and sorted(report["observed"]["functions"]) == ["decode", "prefill_64"]
    for function, pp in base.parity.items():
        rep, golden = _measure(base, base.good, function, samples=pp.samples)
        checks = _checks(rep)
        assert rep["passed"], rep["checks"]
        assert {"interpreter_covers_every_op", "weights_match_checkpoint", "causality",
                "no_nonfinite_intermediates"} <= set(checks)
        assert ("prefill_then_decode" in checks) == (function == "prefill_64")
        assert rep["metrics"]["snr_db"]["value"] >= 55 and rep["metrics"]["fp16_top1_agreement"]["value"] >= 0.98
        assert rep["metrics"]["nonfinite_intermediates"]["value"] == 0
        assert all(np.isfinite(golden[k]).all() for k in golden if k.endswith("_logits"))


# ---- 1-6: contract breaks, caught by verify --------------------------------------------------

@pytest.fixture(scope="module")
def renamed_input(base: SimpleNamespace) -> Path:
    return built(base, "renamed-input", lambda d: broken.edited_copy(
        base.good, d, lambda spec: broken.rename_input(spec, "decode", "input_ids", "token_ids")))


def test_a_renamed_input_is_named(base: SimpleNamespace, renamed_input: Path) -> None:
    (m,) = _only(_verify(base, renamed_input), "io")
    assert m["what"] == "function 'decode' inputs names"
    assert m["expected"] == ["input_ids", "position"] and m["observed"] == ["position", "token_ids"]
    assert m["key_path"] == "shapes.decode" and _spec_line(m["where"]).strip().startswith("decode:")


@pytest.fixture(scope="module")
def enumerated(base: SimpleNamespace) -> SimpleNamespace:
    """An enumerated-packaging variant of the reduced spec (prefill lengths 64 and 128) and its package."""
    with broken.once(base.root, "enumerated-spec") as build:
        if build:
            (base.root / "enumerated-spec").mkdir()
            broken.write_spec_variant(base.root / "enumerated-spec", "toy-enumerated.yaml", broken.EDITS_ENUMERATED)
    spec = base.root / "enumerated-spec" / "toy-enumerated.yaml"
    compiled = compile_one(str(spec), [])

    def make(folder: Path) -> Path:
        exports = {job: broken.export_checked(compiled, job, base.checkpoint, folder / job)
                   for job in broken.export_jobs(compiled).values()}
        return broken.convert(compiled, exports, base.tokenizer, folder / "convert")

    return SimpleNamespace(compiled=compiled, doc=load_file(str(spec)), package=built(base, "enumerated", make))


def test_a_missing_enumerated_shape_is_named(base: SimpleNamespace, enumerated: SimpleNamespace) -> None:
    good = _verify(base, enumerated.package, compiled=enumerated.compiled, doc=enumerated.doc)
    assert good["passed"], good["mismatches"]
    (ids,) = [t for t in good["observed"]["functions"]["prefill"]["inputs"] if t["name"] == "input_ids"]
    assert ids["enumerated_shapes"] == [[1, 64], [1, 128]]
    package = built(base, "missing-enumerated-shape", lambda d: broken.edited_copy(
        enumerated.package, d, lambda spec: broken.drop_enumerated_shape(spec, "prefill", "input_ids", [1, 128])))
    (m,) = _only(_verify(base, package, compiled=enumerated.compiled, doc=enumerated.doc), "io")
    assert m["what"] == "function 'prefill' enumerated input shapes (paired across inputs)"
    assert [[1, 128]] in m["expected"] and [[1, 128]] not in m["observed"] and m["observed"] == [[[1, 64]]]
    assert m["key_path"] == "shapes.prefill" and "prefill: [64, 128]" in _spec_line(m["where"])


@pytest.fixture(scope="module")
def requantized(base: SimpleNamespace) -> Path:
    params = base.compiled.job("convert").job.params
    plan = [q.model_copy(update={"dtype": "int8", "granularity": "per_channel", "block_size": None})
            if q.module == REQUANTIZED else q for q in params.quantization]
    assert plan != list(params.quantization)
    return built(base, "requantized", lambda d: broken.convert(
        base.compiled, base.exports, base.tokenizer, d / "convert", params.model_copy(update={"quantization": plan})))


def test_a_module_quantized_unlike_the_recipe_is_named(base: SimpleNamespace, requantized: Path) -> None:
    mismatches = _only(_verify(base, requantized), "quantization")
    assert len(mismatches) == 2  # once per function: each function's program holds the weight
    for m in mismatches:
        assert m["what"] == f"module {REQUANTIZED!r} weight"
        assert m["expected"] == {"dtype": "int4", "granularity": "per_block", "block_size": 32}
        assert m["observed"] == {"dtype": "int8", "granularity": "per_channel", "block_size": None}
        assert m["key_path"] == "quantization.weights.rules[1]" and '"layers.*.mlp.*"' in _spec_line(m["where"])


def test_an_island_left_in_fp16_is_named(base: SimpleNamespace) -> None:
    params = base.compiled.job("convert").job.params
    islands = [m for m in params.precision.island_modules if m != FP16_ISLAND]
    assert len(islands) == len(params.precision.island_modules) - 1
    variant = params.model_copy(update={"precision": params.precision.model_copy(update={"island_modules": islands})})
    package = built(base, "fp16-island", lambda d: broken.convert(base.compiled, base.exports, base.tokenizer,
                                                                  d / "convert", variant))
    mismatches = _only(_verify(base, package), "precision")
    assert sorted(m["what"] for m in mismatches) == [f"function {f!r}: island {FP16_ISLAND!r} ops compute in"
                                                     for f in ("decode", "prefill_64")]
    for m in mismatches:
        assert m["expected"] == "fp32"
        # the RMSNorm computed in fp16: x^2, mean, + eps, rsqrt, the two muls
        assert sorted(op.split(":")[0] for op in m["observed"]) == ["add", "mul", "mul", "pow", "reduce_mean", "rsqrt"]
        assert all(op.endswith("=fp16") for op in m["observed"])
        assert m["key_path"] == f"precision.islands[module={FP16_ISLAND}]"
        assert '"layers.*.*_layernorm"' in _spec_line(m["where"])


@pytest.mark.parametrize("case", ["missing", "foreign"])
def test_a_missing_or_foreign_spec_hash_is_told_apart(base: SimpleNamespace, case: str) -> None:
    other = compile_one(str(FOREIGN_SPEC), []).spec_hash
    assert other != base.compiled.spec_hash
    value = None if case == "missing" else other
    package = built(base, f"{case}-spec-hash", lambda d: broken.edited_copy(
        base.good, d, lambda spec: broken.set_metadata(spec, "modelspec.spec_hash", value)))
    (m,) = _only(_verify(base, package), "provenance")
    assert m["what"].startswith(f"spec hash ({case}")
    if case == "missing":
        assert (m["expected"], m["observed"]) == (base.compiled.spec_hash, "missing")
    else:
        assert m["expected"]["spec_hash"] == base.compiled.spec_hash and m["observed"]["spec_hash"] == other
    assert m["key_path"] == "version" and _spec_line(m["where"]).startswith("version:")


# ---- 7-10: numeric breaks, caught by parity --------------------------------------------------

@pytest.fixture(scope="module")
def swapped(base: SimpleNamespace) -> Path:
    from runtime.verify.observe import observe

    def make(folder: Path) -> Path:
        obs = observe(base.good, [q.module for q in base.compiled.job("verify").job.params.quantization])
        names = {c["module"]: c["name"] for c in obs["functions"]["decode"]["compressed"]}
        edited: list[int] = []
        package = broken.edited_copy(base.good, folder, lambda spec: edited.append(
            broken.swap_weight_blobs(spec, names[SWAPPED[0]], names[SWAPPED[1]])))
        assert edited == [4]  # both ops, in both functions
        return package

    return built(base, "swapped-weights", make)


def test_swapped_layer_weights_are_named_by_module(base: SimpleNamespace, swapped: Path) -> None:
    contract = _verify(base, swapped)
    assert contract["passed"], contract["mismatches"]  # same shapes, same quantization: the contract cannot see it
    rep, _ = _measure(base, swapped, "decode")
    check = _checks(rep)["weights_match_checkpoint"]
    assert not check["passed"] and not rep["passed"]
    for module in SWAPPED:
        assert f"{module}.weight differs from the checkpoint" in check["message"]
    assert check["message"].count("differs from the checkpoint") == 2
    # the package runs its own (swapped) weights faithfully; against the checkpoint it is far off
    assert rep["metrics"]["snr_db"]["value"] >= 55 and rep["metrics"]["quant_snr_db"]["value"] < 20


def _export_variant(base: SimpleNamespace, function: str, folder: Path, patch: Callable[[pytest.MonkeyPatch], None] | None = None,
                    wrapper: Callable | None = None) -> Path:
    """Export `function` broken (patched while exporting, or through `wrapper`), convert it with the
    good export of the other function."""
    job = base.jobs[function]
    with pytest.MonkeyPatch.context() as mp:
        if patch:
            patch(mp)
        export = broken.export_unchecked(base.compiled, job, base.checkpoint, folder / job, wrapper)
    return broken.convert(base.compiled, {**base.exports, job: export}, base.tokenizer, folder / "convert")


def test_a_non_causal_model_fails_causality(base: SimpleNamespace) -> None:
    import runtime.export.wrappers as wrappers

    package = built(base, "non-causal", lambda d: _export_variant(
        base, "prefill_64", d, patch=lambda mp: mp.setattr(wrappers, "allowed_mask", broken.all_allowed)))
    contract = _verify(base, package)
    assert contract["passed"], contract["mismatches"]  # same signature and weights
    rep, _ = _measure(base, package, "prefill_64")
    check = _checks(rep)["causality"]
    assert not check["passed"] and check["message"].startswith("not causal: changing tokens after position")
    assert check["value"] > 1e-2


def test_a_decode_that_ignores_its_cache_fails_prefill_then_decode(base: SimpleNamespace) -> None:
    package = built(base, "cacheless-decode", lambda d: _export_variant(base, "decode", d, wrapper=broken.cacheless_decode))
    contract = _verify(base, package)
    assert contract["passed"], contract["mismatches"]  # it still has the key/value cache states
    rep, _ = _measure(base, package, "prefill_64")
    checks = _checks(rep)
    assert checks["causality"]["passed"] and checks["weights_match_checkpoint"]["passed"]
    check = checks["prefill_then_decode"]
    assert not check["passed"] and "does the decode function read its cache?" in check["message"]
    assert check["value"] < 10  # dB


@pytest.fixture(scope="module")
def nan_mask(base: SimpleNamespace) -> tuple[Path, dict, dict]:
    import runtime.model.student as student

    package = built(base, "additive-mask", lambda d: _export_variant(
        base, "prefill_64", d, patch=lambda mp: mp.setattr(student.Attention, "forward", broken.additive_mask_attention)))
    return package, *_measure(base, package, "prefill_64")


def test_an_fp16_inf_mask_yielding_nan_fails_nonfinite_intermediates(base: SimpleNamespace, nan_mask: tuple) -> None:
    package, rep, golden = nan_mask
    checks = _checks(rep)
    # exact in fp32: the reference-mode checks pass, only the device's fp16 goes wrong
    assert checks["causality"]["passed"] and checks["prefill_then_decode"]["passed"]
    assert rep["metrics"]["snr_db"]["value"] >= 55
    check = checks["no_nonfinite_intermediates"]
    assert not check["passed"] and "produced inf/NaN in fp16 emulation" in check["message"]
    assert any(":softmax:" in op for op in rep["nonfinite"])  # the NaN reaches the attention probabilities
    fp16 = [golden[k] for k in golden if k.endswith("_interpreter_fp16_logits")]
    assert fp16 and all(np.isnan(x).any() for x in fp16)
    assert rep["metrics"]["fp16_top1_agreement"]["value"] < 0.98  # the toy's gate on it fails too
    assert rep["metrics"]["nonfinite_intermediates"]["value"] == check["value"] > 0


def test_nan_logits_do_not_read_as_a_perfect_fp16_snr(nan_mask: tuple) -> None:
    _, rep, _ = nan_mask
    assert rep["metrics"]["fp16_snr_db"]["value"] < 55


# ---- the CLI -----------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("modelspec")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime.cli"]
    return subprocess.run([*cmd, "verify", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _cli_args(base: SimpleNamespace, package: Path, report: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [str(base.spec), str(package), "--checkpoint", str(base.checkpoint), "--tokenizer", str(base.tokenizer),
            "--json", str(report), "--workdir", str(tmp_path / "store"), *extra]


def test_cli_passes_the_good_package(base: SimpleNamespace, tmp_path: Path) -> None:
    out = _cli(*_cli_args(base, base.good, tmp_path / "good.json", tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"PASS: {base.good.name}" in out.stderr
    report = json.loads((tmp_path / "good.json").read_text())
    assert report["passed"] and report["mismatches"] == [] and report["spec_hash"] == base.compiled.spec_hash
    assert sorted(report["parity"]) == ["decode", "prefill_64"]
    assert all(p["passed"] and all(g["outcome"] == "pass" for g in p["gates"]) for p in report["parity"].values())


def test_cli_fails_a_broken_package_printing_the_problem(base: SimpleNamespace, requantized: Path, swapped: Path,
                                                         tmp_path: Path) -> None:
    out = _cli(*_cli_args(base, requantized, tmp_path / "requantized.json", tmp_path, "--no-parity"), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("[quantization]")]
    assert len(lines) == 2 and all(f"module {REQUANTIZED!r} weight" in line and f"{base.spec}:" in line for line in lines)
    assert "FAIL" in out.stderr and not json.loads((tmp_path / "requantized.json").read_text())["passed"]
    # a problem only parity sees also fails the CLI, named in its output
    out = _cli(*_cli_args(base, swapped, tmp_path / "swapped.json", tmp_path), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "weights_match_checkpoint" in out.stderr and f"{SWAPPED[0]}.weight differs from the checkpoint" in out.stderr
    assert not json.loads((tmp_path / "swapped.json").read_text())["passed"]


def test_cli_refuses_a_path_that_is_not_a_package(base: SimpleNamespace, tmp_path: Path) -> None:
    fake = tmp_path / "fake.mlpackage"
    fake.mkdir()
    out = _cli(*_cli_args(base, fake, tmp_path / "fake.json", tmp_path), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "is not an .mlpackage (no Manifest.json)" in out.stderr and not (tmp_path / "fake.json").exists()


def test_cli_reports_a_renamed_input_without_crashing_in_parity(base: SimpleNamespace, renamed_input: Path,
                                                               tmp_path: Path) -> None:
    out = _cli(*_cli_args(base, renamed_input, tmp_path / "renamed.json", tmp_path), cwd=tmp_path)
    assert out.returncode == 1 and "'token_ids'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and (tmp_path / "renamed.json").exists()


def _strip_modelspec_metadata(spec: Any) -> None:
    user = spec.description.metadata.userDefined
    for key in [k for k in user if k.startswith("modelspec.")]:
        del user[key]


def test_cli_a_failed_check_exits_1_even_when_parity_cannot_run(base: SimpleNamespace, tmp_path: Path) -> None:
    """Metadata stripped: provenance fails, and the fingerprints that would find the checkpoint
    in the store are gone too. The verdict is the failed check (1), not the missing input (2)."""
    package = built(base, "stripped-metadata", lambda d: broken.edited_copy(base.good, d, _strip_modelspec_metadata))
    args = [str(base.spec), str(package), "--tokenizer", str(base.tokenizer), "--json", str(tmp_path / "stripped.json"),
            "--workdir", str(tmp_path / "empty-store")]
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "[provenance]" in out.stderr and "spec hash (missing" in out.stderr
    assert "parity not run: no reference checkpoint" in out.stderr and f"FAIL: {package.name}" in out.stderr
    assert "Traceback" not in out.stderr
    report = json.loads((tmp_path / "stripped.json").read_text())
    assert not report["passed"] and report["parity"] == {} and "no reference checkpoint" in report["parity_not_run"]
    # a package that passed every check but has no checkpoint to compare with is still bad input
    out = _cli(str(base.spec), str(base.good), "--tokenizer", str(base.tokenizer), "--workdir", str(tmp_path / "empty-store"),
               cwd=tmp_path)
    assert out.returncode == 2 and "no reference checkpoint" in out.stderr, out.stderr
