"""Loss terms and schedules of the training jobs, on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from runtime.train import losses
from runtime.train.metrics import GradBalance
from runtime.train.schedules import curriculum_seq_len, learning_rate, loss_weight

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "tool_call_start": 5, "tool_call_end": 6}
V = 12


def batch(ids: list[int], loss: list[int], **masks: list[int]) -> dict[str, torch.Tensor]:
    t = len(ids)
    out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, t, dtype=torch.long),
           "loss_mask": torch.tensor([loss])}
    for name in ("tool_name_mask", "json_args_mask", "integration_mask"):
        out[name] = torch.tensor([masks.get(name, [0] * t)])
    return out


def with_teacher(b: dict, logits: torch.Tensor, k: int) -> dict:
    top = logits.topk(k, dim=-1)
    return b | {"topk_ids": top.indices, "topk_logits": top.values}


def test_kl_is_zero_when_student_matches_a_full_vocabulary_teacher():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, V)
    b = with_teacher(batch([1, 3, 4, 7, 8, 2], [0, 0, 1, 1, 1, 1]), logits, k=V)
    terms = losses.compute(logits, b, {"kl": {"weight": 1.0, "temperature": 2.0}}, SPECIAL)
    assert terms["kl"].abs().item() < 1e-5
    other = with_teacher(b, torch.randn(1, 6, V), k=V)
    assert losses.compute(logits, other, {"kl": {"weight": 1.0, "temperature": 2.0}}, SPECIAL)["kl"].item() > 0.01


def test_ce_terms_use_only_their_masked_positions():
    torch.manual_seed(1)
    logits = torch.randn(1, 6, V, requires_grad=True)
    b = with_teacher(batch([1, 3, 4, 7, 8, 2], [0, 0, 1, 1, 1, 1], tool_name_mask=[0, 0, 0, 1, 0, 0]), logits.detach(), 4)
    cfg = {"ce_ground_truth": {"weight": 1.0}, "tool_name": {"weight": 1.0}, "integration": {"weight": 1.0}}
    terms = losses.compute(logits, b, cfg, SPECIAL)
    logp = torch.log_softmax(logits[0, :-1].detach(), -1)
    assert terms["tool_name"].item() == pytest.approx(-logp[2, 7].item(), abs=1e-5)  # position 2 predicts token 3
    expected = -(logp[1, 4] + logp[2, 7] + logp[3, 8] + logp[4, 2]) / 4
    assert terms["ce_ground_truth"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert terms["integration"].item() == 0.0  # no integration tokens: zero, not NaN
    (grad,) = torch.autograd.grad(terms["tool_name"], logits)
    assert grad[0, 2].abs().sum() > 0 and grad[0, [0, 1, 3, 4, 5]].abs().sum() == 0


def test_early_tool_covers_the_call_within_the_window_only_when_a_tool_is_needed():
    ids = [1, 9, 3, 4, 5, 10, 11, 6, 2]  # prompt 9 | target <think></think><tool_call> a b </tool_call> eos
    loss = [0, 0, 1, 1, 1, 1, 1, 1, 1]
    logits = torch.zeros(1, len(ids), V, requires_grad=True)
    cfg = {"early_tool": {"weight": 1.0, "within_tokens": 4}}
    term = losses.compute(logits, batch(ids, loss), cfg, SPECIAL)["early_tool"]
    (grad,) = torch.autograd.grad(term, logits)
    touched = sorted(int(t) for t in torch.nonzero(grad[0].abs().sum(-1)).flatten())
    assert touched == [3, 4]  # predictions of <tool_call> (target index 2) and 10 (index 3); index 4+ is outside
    control = [1, 9, 3, 4, 11, 11, 11, 11, 2]
    assert losses.compute(logits, batch(control, loss), cfg, SPECIAL)["early_tool"].item() == 0.0


def test_length_kd_penalises_a_student_that_will_not_stop_unless_it_is_complete():
    ids = [1, 9, 7, 8, 2]
    loss = [0, 1, 1, 1, 1]
    teacher = torch.zeros(1, 5, V)
    teacher[0, :, 2] = 20.0  # the teacher ends at once everywhere
    student = torch.zeros(1, 5, V)
    student[0, :, 2] = -20.0  # the student never ends
    b = with_teacher(batch(ids, loss, json_args_mask=[0, 0, 1, 0, 0]), teacher, k=4)
    cfg = {"length_kd": {"weight": 1.0, "hinge": 0.15, "slope": 1.0}}
    assert losses.compute(student, b, cfg, SPECIAL)["length_kd"].item() > 1.0
    complete = student.clone()
    complete[0, 1, 7] = 30.0  # argmax equals the data on the JSON-argument token: exempt
    assert losses.compute(complete, b, cfg, SPECIAL)["length_kd"].item() == 0.0
    assert losses.compute(teacher, b, cfg, SPECIAL)["length_kd"].item() == 0.0  # no excess


def test_schedules():
    sched = {"warmup_steps": 10, "decay": "cosine", "min_lr": 0.1}
    assert learning_rate(0, 100, 1.0, sched) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, sched) == pytest.approx(1.0)
    assert learning_rate(55, 100, 1.0, sched) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(100, 100, 1.0, sched) == pytest.approx(0.1)
    assert learning_rate(50, 100, 1.0, sched | {"decay": "constant"}) == 1.0
    assert loss_weight(0.3, 7) == 0.3
    ramp = {"ramp": {"start": 0.0, "end": 0.2, "steps": 100}}
    assert [loss_weight(ramp, s) for s in (0, 50, 100, 400)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    step = {"step": {"before": 1.0, "after": 0.0, "at_step": 5}}
    assert [loss_weight(step, s) for s in (4, 5)] == [1.0, 0.0]
    cur = [{"until_step": 200, "seq_len": 64}, {"until_step": 400, "seq_len": 128}]
    assert [curriculum_seq_len(s, cur) for s in (0, 199, 200, 399)] == [64, 64, 128, 128]


def test_grad_balance_alerts_on_a_dominating_loss_only():
    gb = GradBalance(max_ratio=10.0, window=20)
    for step in range(0, 20, 10):
        assert gb.add(step, {"kl": 1.0, "ce": 2.0, "tool": 1.5}) is None
    alert = gb.add(20, {"kl": 1.0, "ce": 2.0, "tool": 500.0})
    assert alert is not None and alert["loss"] == "tool" and alert["ratio"] > 10
