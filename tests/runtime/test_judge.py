"""The judge's parts without a pipeline run: its rows, its loss terms, its head in the trainer's loss head, its metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compiler.planning.params import ArchitectureP, JudgeP
from runtime.data import judge as J
from runtime.jobs.eval_judge import score, verdict_json
from runtime.model.student import Student
from runtime.train import judge_losses
from runtime.train.head import LossHead

CLAUSES = ["privacy", "format"]
PAIR = {"id": "p1", "kind": "pairwise", "prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.",
        "teacher": {"preference": 0.8}}
CLAUSE = {"id": "c1", "kind": "clauses", "prompt": "Hi?", "response": "Mail me at a@b.c", "labels": ["privacy"],
          "teacher": {"clauses": {"privacy": 0.9}}}


@pytest.mark.parametrize("row, reason", [
    ("not an object", "bad_line"),
    ({**PAIR, "kind": "ranking"}, "bad_schema"),
    ({**PAIR, "extra": 1}, "bad_schema"),
    ({**PAIR, "chosen": ""}, "bad_schema"),
    ({**CLAUSE, "labels": "privacy"}, "bad_schema"),
    ({**PAIR, "rejected": "Hello."}, "identical_responses"),
    ({**PAIR, "teacher": {"preference": 1.5}}, "bad_probability"),
    ({**PAIR, "teacher": {"preference": True}}, "bad_probability"),
    ({**CLAUSE, "labels": ["tone"]}, "unknown_clause"),
    ({**CLAUSE, "teacher": {"clauses": {"tone": 0.5}}}, "unknown_clause"),
    ({**CLAUSE, "teacher": {"clauses": {"privacy": float("nan")}}}, "bad_probability"),
    (PAIR, None), (CLAUSE, None), ({**PAIR, "meta": {"source": "x"}}, None),
])
def test_rows_are_checked_and_dropped_for_the_first_reason(row, reason):
    assert J.check_row(row, CLAUSES, set()) == reason


def test_an_id_seen_before_is_a_duplicate():
    seen: set[str] = set()
    assert J.check_row(PAIR, CLAUSES, seen) is None and J.check_row(PAIR, CLAUSES, seen) == "duplicate_id"


def test_a_pair_becomes_both_orders_with_its_targets():
    (text0, meta0, v0), (text1, meta1, v1) = J.rows_of(PAIR, CLAUSES)
    assert text0 == J.PAIR.format(prompt="Hi?", a="Hello.", b="Go away.")
    assert text1 == J.PAIR.format(prompt="Hi?", a="Go away.", b="Hello.")
    assert (meta0["order"], meta1["order"]) == (0, 1) and meta0["pair"] == meta1["pair"] == "p1"
    assert v0[1:3].tolist() == pytest.approx([1.0, 0.8]) and v1[1:3].tolist() == pytest.approx([0.0, 0.2])
    assert (v0[3:] == -1).all() and len(v0) == J.width(2)


def test_a_clause_row_carries_its_labels_and_the_teacher_where_given():
    [(text, meta, v)] = J.rows_of(CLAUSE, CLAUSES)
    assert text == J.SINGLE.format(prompt="Hi?", response="Mail me at a@b.c") and meta["labels"] == ["privacy"]
    assert v[1:3].tolist() == [-1, -1] and v[3:5].tolist() == [1, 0] and v[5:7].tolist() == pytest.approx([0.9, -1])


def _vectors(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


JUDGE = JudgeP(clauses=CLAUSES, objective="bradley_terry", margin=1.0)
LOSSES = {"pairwise": {"weight": 1.0}, "clauses": {"weight": 1.0}, "verdict_kd": {"weight": 1.0}}


def test_the_terms_match_their_definitions():
    # rows: a pair (A chosen, teacher 0.8), its swap, a clause row (privacy violated; teacher privacy 0.9)
    vec = _vectors([[5, 1, 0.8, -1, -1, -1, -1], [5, 0, 0.2, -1, -1, -1, -1], [5, -1, -1, 1, 0, 0.9, -1]])
    out = torch.tensor([[2.0, 0.3, -0.1], [-1.0, 0.0, 0.0], [0.5, 1.5, -2.0]])
    valid = torch.tensor([True, True, True])
    t = judge_losses.terms(out, vec, valid, LOSSES, JUDGE)
    bt = (-math.log(torch.sigmoid(torch.tensor(2.0))) - math.log(torch.sigmoid(torch.tensor(1.0)))) / 2
    assert float(t["pairwise"]) == pytest.approx(bt, rel=1e-6)
    clauses = (F.binary_cross_entropy_with_logits(torch.tensor(1.5), torch.tensor(1.0))
               + F.binary_cross_entropy_with_logits(torch.tensor(-2.0), torch.tensor(0.0))) / 2
    assert float(t["clauses"]) == pytest.approx(float(clauses), rel=1e-6)
    kd = (F.binary_cross_entropy_with_logits(torch.tensor(2.0), torch.tensor(0.8))
          + F.binary_cross_entropy_with_logits(torch.tensor(-1.0), torch.tensor(0.2))
          + F.binary_cross_entropy_with_logits(torch.tensor(1.5), torch.tensor(0.9))) / 3
    assert float(t["verdict_kd"]) == pytest.approx(float(kd), rel=1e-6)
    margin = judge_losses.terms(out, vec, valid, {"pairwise": {"weight": 1.0}},
                                JudgeP(clauses=CLAUSES, objective="margin", margin=1.0))
    assert float(margin["pairwise"]) == pytest.approx((0.0 + 0.0) / 2) and float(
        judge_losses.terms(out * 0.25, vec, valid, {"pairwise": {"weight": 1.0}},
                           JudgeP(clauses=CLAUSES, objective="margin", margin=1.0))["pairwise"]) == pytest.approx((0.5 + 0.75) / 2)


def test_a_batch_without_a_term_s_values_gives_zero_with_a_zero_gradient():
    vec = _vectors([[3, -1, -1, 0, 1, -1, -1]])
    out = torch.randn(1, 3, requires_grad=True)
    t = judge_losses.terms(out, vec, torch.tensor([True]), LOSSES, JUDGE)
    assert float(t["pairwise"]) == 0.0 and float(t["verdict_kd"]) == 0.0
    (t["pairwise"] + t["verdict_kd"]).backward()
    assert float(out.grad.abs().sum()) == 0.0


def test_a_row_cut_before_its_verdict_position_is_left_out():
    h = torch.randn(2, 4, 8)
    vec = _vectors([[3, 1, -1, -1, -1, -1, -1], [6, 0, -1, -1, -1, -1, -1]])
    picked, valid = judge_losses.read_positions(h, vec)
    assert valid.tolist() == [True, False] and torch.equal(picked[0], h[0, 3])


ARCH = ArchitectureP(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_head=16, mlp_hidden=48,
                     norm_eps=1e-6, rope_theta=10000.0, max_context=32, tie_embeddings=True, judge_outputs=3)


def test_the_loss_head_trains_the_verdict_head_without_the_vocabulary_head():
    model = Student(ARCH, seed=0)
    ids = torch.randint(9, 64, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.zeros_like(ids),
             "judge": _vectors([[9, 1, 0.7, -1, -1, -1, -1], [9, -1, -1, 1, 0, -1, -1]])}
    head = LossHead(batch, LOSSES, {"eos": 2}, 4, probe={"pairwise": 1.0, "clauses": 1.0, "verdict_kd": 1.0}, judge=JUDGE)
    assert not head.tokens
    out = model(ids, batch["attention_mask"], head=head)
    assert set(out["terms"]) == {"pairwise", "clauses", "verdict_kd"} and set(out["grad_norm_by_loss"]) == set(out["terms"])
    sum(out["terms"].values()).backward()
    assert float(model.judge_head.weight.grad.abs().sum()) > 0
    # the head read at the last token equals the exported path's output there
    with torch.no_grad():
        _, heads = model.judge_outputs(ids)
    assert torch.allclose(out["judge"], heads[:, 9], atol=1e-5)


def test_an_untied_judge_trains_every_parameter_it_updates():
    """DDP needs a gradient for every trainable parameter at every step: the judge's unused vocabulary head is
    frozen (a 2-rank DDP run failed at its second step before)."""
    model = Student(ARCH.model_copy(update={"tie_embeddings": False}), seed=0)
    ids = torch.randint(9, 64, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.zeros_like(ids),
             "judge": _vectors([[9, 1, 0.7, -1, -1, -1, -1], [9, -1, -1, 1, 0, -1, -1]])}
    out = model(ids, batch["attention_mask"], head=LossHead(batch, LOSSES, {"eos": 2}, 4, judge=JUDGE))
    sum(out["terms"].values()).backward()
    assert not model.lm_head.weight.requires_grad
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_malformed_strings_are_dropped_and_a_dropped_row_does_not_reserve_its_id():
    seen: set[str] = set()
    assert J.check_row({**PAIR, "id": "s\ud800"}, CLAUSES, seen) == "bad_schema"
    assert J.check_row({**PAIR, "prompt": "hi \ud800"}, CLAUSES, seen) == "bad_schema"
    assert J.check_row({**CLAUSE, "labels": ["tone"]}, CLAUSES, seen) == "unknown_clause"
    assert J.check_row(CLAUSE, CLAUSES, seen) is None and seen == {"c1"}
    from runtime.jobs.dataset_checks import split_of

    assert split_of("s\ud800") in ("train", "val")


def test_the_metrics_follow_their_definitions():
    meta = [{"id": "p", "kind": "pairwise", "pair": "p", "order": 0}, {"id": "p", "kind": "pairwise", "pair": "p", "order": 1},
            {"id": "q", "kind": "pairwise", "pair": "q", "order": 0}, {"id": "q", "kind": "pairwise", "pair": "q", "order": 1},
            {"id": "c", "kind": "clauses"}, {"id": "d", "kind": "clauses"}]
    vectors = [[0, 1, -1, -1, -1, -1, -1], [0, 0, -1, -1, -1, -1, -1], [0, 1, -1, -1, -1, -1, -1], [0, 0, -1, -1, -1, -1, -1],
               [0, -1, -1, 1, 0, -1, -1], [0, -1, -1, 0, 1, -1, -1]]
    # p: right in both orders; q: picks A both times (position bias: one order wrong); c: privacy right;
    # d: format missed, privacy falsely flagged
    outputs = [[2.0, 0, 0], [-2.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0.0, 3.0, -3.0], [0.0, 1.0, -1.0]]
    metrics, per_clause, counts, _ = score(meta, vectors, outputs, CLAUSES)
    assert metrics["pairwise_accuracy"] == {"value": 0.75, "n": 4}
    assert metrics["position_bias_rate"] == {"value": 0.5, "n": 2}
    assert per_clause["privacy"]["f1"] == pytest.approx(2 / 3) and per_clause["format"]["f1"] == 0.0
    assert metrics["clause_f1_micro"]["value"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert metrics["clause_f1_min"]["value"] == 0.0 and counts["pairs_in_both_orders"] == 2
    assert metrics["verdict_json_validity"] == {"value": 1.0, "n": 6}
    nan = score(meta[:1], vectors[:1], [[float("nan"), 0, 0]], CLAUSES)[0]
    assert nan["verdict_json_validity"]["value"] == 0.0


def test_the_verdict_json_is_what_an_app_builds():
    v = json.loads(verdict_json([1.0, 2.0, -2.0], CLAUSES, pairwise=True))
    assert v["preferred"] == "A" and v["violated"] == ["privacy"] and v["p_a_better"] == pytest.approx(1 / (1 + math.e ** -1))
    with pytest.raises(ValueError):
        verdict_json([float("inf"), 0.0, 0.0], CLAUSES, pairwise=True)
    assert "preferred" not in json.loads(verdict_json([0.0, -1.0, -1.0], CLAUSES, pairwise=False))


def test_judge_vectors_are_never_cropped_in_a_batch():
    from runtime.train.data import Split, make_batch

    ids = torch.randint(9, 64, (2, 12))
    att = torch.ones_like(ids)
    att[1, 6:] = 0
    tensors = {"input_ids": ids, "attention_mask": att, **{m: torch.zeros_like(ids) for m in (
        "loss_mask", "tool_name_mask", "json_args_mask", "integration_mask")},
        "topk_ids": torch.zeros(2, 12, 0, dtype=torch.long), "topk_logits": torch.zeros(2, 12, 0),
        "judge": torch.from_numpy(np.array([[11, 1, -1, -1, -1, -1, -1], [5, 0, -1, -1, -1, -1, -1]], np.float32))}
    batch = make_batch(Split(tensors), [1, 0], 8, torch.device("cpu"))
    assert batch["input_ids"].shape == (2, 8) and batch["judge"][:, 0].tolist() == [5, 11]
