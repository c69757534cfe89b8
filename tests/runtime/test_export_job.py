"""The export job: contract check, and prefill/decode programs that behave like the student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compiler.planning.params import FunctionP, TensorP
from runtime.export.contract import ContractError, check_contract
from runtime.export.program import describe
from runtime.jobs import export
from runtime.jobs.export import ExportJobError, upstream_checkpoint

from .helpers import Ctx
from .toy_exports import qat_student, run_export, save_checkpoint, toy

STEPS = 8
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")  # torch.export.load, inside torch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(toy(), tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return qat_student(toy())


def exported(mode: str, job_id: str, checkpoint: Path, root: Path) -> tuple[torch.export.ExportedProgram, dict]:
    compiled = toy() if mode == "state" else toy("export.coreml.decode_cache=explicit")
    outs = run_export(compiled, job_id, checkpoint, root / mode)
    return torch.export.load(str(outs["program"])), json.loads(outs["report"].read_text())


@pytest.fixture(scope="module")
def exports(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """(mode, job id) -> (program, report), each exported once per module."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str], tuple] = {}

    def get(mode: str, job_id: str) -> tuple[torch.export.ExportedProgram, dict]:
        if (mode, job_id) not in cache:
            cache[mode, job_id] = exported(mode, job_id, checkpoint, root)
        return cache[mode, job_id]
    return get


@pytest.fixture(scope="module", params=["state", "explicit"])
def programs(request: pytest.FixtureRequest, exports) -> dict:  # noqa: ANN001
    (prefill, prefill_report), (decode, decode_report) = (exports(request.param, j) for j in ("export-prefill-64", "export-decode"))
    return {"mode": request.param, "prefill": prefill, "decode": decode,
            "reports": {"prefill": prefill_report, "decode": decode_report}}


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(seed)).to(torch.int32)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 5e-3) -> bool:
    return float((a.float() - b.float()).abs().max()) <= rel * max(1.0, float(b.abs().max()))


def test_reports_pass_the_contract_and_every_check(programs: dict) -> None:
    for role, report in programs["reports"].items():
        assert report["contract"] == {"passed": True, "problems": [], "output_names": report["contract"]["output_names"]}
        assert report["checks"] and all(c["passed"] for c in report["checks"]), report["checks"]
        assert report["checkpoint"]["job"] == "qat" and report["checkpoint"]["quantized"] is True
        assert report["provenance"]["spec"]["hash"] == "spec-hash-for-tests"
    decode = programs["reports"]["decode"]["program"]
    assert [i["name"] for i in decode["inputs"]][:2] == ["input_ids", "position"]
    assert all(i["dtype"] == "int32" for i in decode["inputs"][:2])
    if programs["mode"] == "state":
        assert [s["name"] for s in decode["states"]] == ["key_cache", "value_cache"]
        assert decode["states"][0] == {"name": "key_cache", "dtype": "fp16", "shape": [2, 1, 2, 256, 32]}
    else:
        assert decode["states"] == [] and [i["name"] for i in decode["inputs"]][2:] == ["key_cache", "value_cache"]


@torch.no_grad()
def test_prefill_then_decode_reproduces_the_full_logits(programs: dict, student: torch.nn.Module) -> None:
    prefill, decode = programs["prefill"].module(), programs["decode"].module()
    ids = tokens(64 + STEPS, seed=1)
    full = student(ids)
    if programs["mode"] == "state":
        logits = prefill(ids[:, :64])
        decode.key_cache.copy_(prefill.key_cache)
        decode.value_cache.copy_(prefill.value_cache)
    else:
        logits, keys, values = prefill(ids[:, :64])
        k = torch.zeros(2, 1, 2, 256, 32, dtype=torch.float16)
        v = torch.zeros_like(k)
        k[:, :, :, :64], v[:, :, :, :64] = keys, values
    assert close(logits, full[:, :64])
    for j in range(STEPS):
        pos = torch.tensor([64 + j], dtype=torch.int32)
        if programs["mode"] == "state":
            out = decode(ids[:, 64 + j:65 + j], pos)
        else:
            out, k, v = decode(ids[:, 64 + j:65 + j], pos, k, v)
        assert out.dtype == torch.float16 and out.shape == (1, 1, 512)
        assert close(out, full[:, 64 + j:65 + j]), j


@torch.no_grad()
def test_decode_uses_its_cache_and_position(programs: dict) -> None:
    decode = programs["decode"].module()
    token, pos = tokens(1, seed=2), torch.tensor([40], dtype=torch.int32)
    g = torch.Generator().manual_seed(3)
    k = torch.randn(2, 1, 2, 256, 32, generator=g).half()
    v = torch.randn(2, 1, 2, 256, 32, generator=g).half()

    def step(k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if programs["mode"] == "state":
            decode.key_cache.copy_(k)
            decode.value_cache.copy_(v)
            return decode(token, pos)
        return decode(token, pos, k, v)[0]

    base = step(k, v, pos)
    assert not close(step(k * 0.5, v, pos), base, rel=1e-3)
    assert not close(step(k, -v, pos), base, rel=1e-3)
    assert not close(step(k, v, torch.tensor([90], dtype=torch.int32)), base, rel=1e-3)
    later = k.clone()
    later[:, :, :, 41:] += 1.0  # positions after the token are masked
    assert torch.equal(step(later, v, pos), base)


@torch.no_grad()
def test_causality(programs: dict) -> None:
    prefill = programs["prefill"].module()
    ids = tokens(64, seed=4)
    changed = ids.clone()
    changed[:, 30:] = (changed[:, 30:] + 7) % 512
    a, b = (prefill(x) for x in (ids, changed))
    a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
    assert torch.equal(a[:, :30], b[:, :30])
    assert not torch.equal(a[:, 30:], b[:, 30:])


@torch.no_grad()
def test_same_prefix_same_logits_in_every_shape(exports, student: torch.nn.Module) -> None:  # noqa: ANN001
    prefix = tokens(40, seed=5)
    ref = student(prefix)
    for job_id, t in (("export-prefill-64", 64), ("export-prefill-128", 128)):
        program, report = exports("state", job_id)
        padded = torch.cat([prefix, tokens(t - 40, seed=t)], dim=1)
        assert close(program.module()(padded)[:, :40], ref), job_id
        assert [c for c in report["checks"] if c["name"] == "shape_independence"][0]["passed"]


@pytest.mark.slow
@torch.no_grad()
def test_enumerated_prefill_is_one_program_for_every_shape(checkpoint: Path, student: torch.nn.Module,
                                                          tmp_path: Path) -> None:
    compiled = toy("export.coreml.packaging=enumerated")
    outs = run_export(compiled, "export-prefill", checkpoint, tmp_path)
    report = json.loads(outs["report"].read_text())
    (inp,) = report["program"]["inputs"]
    assert isinstance(inp["shape"][1], str) and inp["ranges"][inp["shape"][1]] == [64, 256]
    independence = [c for c in report["checks"] if c["name"] == "shape_independence"][0]
    assert independence["passed"] and sorted(independence["per_length"]) == ["128", "256", "64"]
    program = torch.export.load(str(outs["program"])).module()
    prefix = tokens(50, seed=6)
    firsts = [program(torch.cat([prefix, tokens(t - 50, seed=t)], dim=1))[:, :50] for t in (64, 128, 256)]
    assert all(torch.equal(firsts[0], f) for f in firsts[1:])
    assert close(firsts[0], student(prefix))


def test_contract_mismatch_names_the_tensor_and_both_sides(exports) -> None:  # noqa: ANN001
    desc = describe(exports("state", "export-decode")[0])
    fn = toy().job("export-decode").job.params.function
    assert check_contract(desc, fn) == []
    wrong_dtype = fn.model_copy(update={"inputs": [fn.inputs[0], TensorP(name="position", dtype="int32", shape=[2])]})
    assert check_contract(desc, wrong_dtype) == [
        "function 'decode': input 'position': expected int32 [2], observed int32 [1]"]
    wrong_state = fn.model_copy(update={"states": [fn.states[0].model_copy(update={"dtype": "fp32"}), fn.states[1]]})
    assert check_contract(desc, wrong_state) == [
        "function 'decode': state 'key_cache': expected fp32 [2, 1, 2, 256, 32], observed fp16 [2, 1, 2, 256, 32]"]
    frozen = dict(desc, states=desc["states"][1:], constant_buffers=["key_cache"])
    assert check_contract(frozen, fn) == ["function 'decode': state 'key_cache' is never written by the program (a constant buffer)"]


def test_job_fails_on_a_contract_the_program_does_not_meet(checkpoint: Path, tmp_path: Path) -> None:
    params = toy().job("export-prefill-64").job.params
    fn: FunctionP = params.function
    extra = TensorP(name="hidden", dtype="fp16", shape=[1, 64, 128])
    bad = params.model_copy(update={"function": fn.model_copy(update={"outputs": [*fn.outputs, extra]})})
    with pytest.raises(ContractError) as err:
        export.run(bad, {"qat": {"checkpoint": checkpoint}}, tmp_path, Ctx(work_dir=tmp_path))
    message = str(err.value)
    assert "function 'prefill_64'" in message and "expected 2 outputs ['logits', 'hidden'], observed 1" in message
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["contract"]["passed"] is False and report["contract"]["problems"] == err.value.problems


def test_the_checkpoint_is_the_one_upstream_checkpoint(tmp_path: Path) -> None:
    assert upstream_checkpoint({"qat": {"checkpoint": tmp_path / "q", "report": tmp_path / "r"}}) == ("qat", tmp_path / "q")
    with pytest.raises(ExportJobError, match="exactly one upstream student checkpoint"):
        upstream_checkpoint({"qat": {"checkpoint": tmp_path}, "train": {"checkpoint": tmp_path}})
    with pytest.raises(ExportJobError):
        upstream_checkpoint({"dataset": {"data": tmp_path}})
