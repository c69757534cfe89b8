"""The worker's `verify` function (shapes.decode.verify_k): the last accepted token plus k drafted
ones scored and written to the cache in one call, reproducing the full forward, also after a
rejected draft (its stale cache entries are overwritten, never read). Student.extend in torch, and
the export job's program for both cache kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runtime.model.student import Student

from .toy_exports import qat_student, run_export, save_checkpoint, toy

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


def test_the_toy_worker_exports_a_verify_function_for_its_drafters_k():
    fn = toy().job("export-verify").job.params.function
    assert (fn.name, fn.role, fn.seq_lens) == ("verify", "verify", [5])
    assert [t.name for t in fn.inputs] == ["input_ids", "position"] and fn.inputs[0].shape == [1, 5]
    assert [t.name for t in fn.outputs] == ["logits"] and fn.outputs[0].shape == [1, 5, 512]
    assert [t.name for t in fn.states] == ["key_cache", "value_cache"]


def test_extend_is_the_full_forward_and_a_rejected_draft_leaves_no_trace():
    student: Student = qat_student(toy()).eval()
    ids = torch.randint(9, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    other = torch.randint(9, 512, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, k, v = student.prefill(ids[:, :30], *student.empty_cache(1, 64))
        logits, k, v = student.extend(ids[:, 30:35], torch.tensor([30]), k, v)
        assert (logits - student(ids[:, :35])[:, 30:]).abs().max() < 1e-4
        # two drafted tokens accepted (positions 30, 31 kept), the rest rejected: resume at 32 with other tokens
        again, _, _ = student.extend(other, torch.tensor([32]), k, v)
        ref = student(torch.cat([ids[:, :32], other], dim=1))[:, 32:]
        assert (again - ref).abs().max() < 1e-4
        one, _, _ = student.extend(ids[:, 30:31], torch.tensor([30]), *student.prefill(ids[:, :30], *student.empty_cache(1, 64))[1:])
        two, _, _ = student.decode(ids[:, 30:31], torch.tensor([30]), *student.prefill(ids[:, :30], *student.empty_cache(1, 64))[1:])
        assert (one - two).abs().max() < 1e-5  # one token: extend is decode


@pytest.mark.parametrize("mode", ["state", "explicit"])
def test_the_exported_verify_passes_its_checks(mode: str, tmp_path: Path):
    compiled = toy() if mode == "state" else toy("export.coreml.decode_cache=explicit")
    checkpoint = save_checkpoint(compiled, tmp_path / "checkpoint")
    outs = run_export(compiled, "export-verify", checkpoint, tmp_path)
    report = json.loads(outs["report"].read_text())
    assert report["contract"]["passed"], report["contract"]
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"verify_reproduces_full", "verify_after_a_rejected_draft", "decode_uses_cache"}
    assert all(c["passed"] for c in checks.values()), checks
