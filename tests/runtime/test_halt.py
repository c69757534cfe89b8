"""The halt head without a pipeline run: its targets and term, its place in the trainer's loss head and balance
probe, its exported output, its metrics, and the rules that keep the head and its term together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compiler.planning.params import ArchitectureP, FunctionP, TensorP
from runtime.export.wrappers import wrap
from runtime.jobs.eval_halt import auroc, score
from runtime.model.student import Student
from runtime.train import halt_loss
from runtime.train.head import LossHead
from tests.compiler.test_invalid_specs import expected_line, problems_of

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "tool_call_start": 5, "tool_call_end": 6}
ARCH = ArchitectureP(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_head=16, mlp_hidden=48,
                     norm_eps=1e-6, rope_theta=10000.0, max_context=32, tie_embeddings=False, halt_head=True)


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 20, 21, 5, 22, 6, 30, 31, 2], [1, 40, 41, 42, 2, 0, 0, 0, 0]])
    loss = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long() | (torch.arange(9) == 0).long(), "loss_mask": loss}


def test_the_targets_are_the_turn_ends_at_target_positions():
    labels, mask = halt_loss.targets(_batch(), SPECIAL)
    # position t predicts token t + 1: the tool-call end (6) after position 4, eos (2) after 7 and 3
    assert labels[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 1] and labels[1].tolist()[:4] == [0, 0, 0, 1]
    assert mask[0].tolist() == [False, True, True, True, True, False, True, True]
    logits = torch.randn(2, 8)
    expected = F.binary_cross_entropy_with_logits(logits[mask], labels[mask])
    assert float(halt_loss.term(logits, labels, mask)) == pytest.approx(float(expected), rel=1e-6)


def test_the_loss_head_trains_the_halt_head_and_the_probe_measures_it_beside_the_token_terms():
    model = Student(ARCH, seed=0)
    batch = _batch()
    cfg = {"ce_ground_truth": {"weight": 1.0}, "halt": {"weight": 0.1}}
    head = LossHead(batch, cfg, SPECIAL, 4, probe={"ce_ground_truth": 1.0, "halt": 0.1})
    out = model(batch["input_ids"], batch["attention_mask"], head=head)
    assert set(out["terms"]) == {"ce_ground_truth", "halt"}
    assert set(out["grad_norm_by_loss"]) == {"ce_ground_truth", "halt"} and out["grad_norm_by_loss"]["halt"] > 0
    out["terms"]["halt"].backward()
    assert float(model.halt_head.weight.grad.abs().sum()) > 0 and model.lm_head.weight.grad is None


def test_the_exported_decode_returns_the_halt_logit_of_its_position():
    model = Student(ARCH, seed=0).eval()
    cache = [ARCH.n_layers, 1, ARCH.n_kv_heads, 16, ARCH.d_head]
    fn = FunctionP(name="decode", role="decode", seq_lens=[1],
                   inputs=[TensorP(name="input_ids", dtype="int32", shape=[1, 1]), TensorP(name="position", dtype="int32", shape=[1])],
                   outputs=[TensorP(name="logits", dtype="fp32", shape=[1, 1, 64]), TensorP(name="halt", dtype="fp32", shape=[1, 1, 1])],
                   states=[TensorP(name=n, dtype="fp32", shape=cache) for n in ("key_cache", "value_cache")])
    module = wrap(model, fn, "state")
    ids = torch.tensor([[1, 20, 21, 22]])
    with torch.no_grad():
        outs = [module(ids[:, i:i + 1].int(), torch.tensor([i], dtype=torch.int32)) for i in range(4)]
        logits, halt = model.halt_outputs(ids)
    assert all(isinstance(o, tuple) and len(o) == 2 for o in outs)
    assert torch.allclose(torch.cat([o[1] for o in outs], dim=1), halt, atol=1e-5)
    assert torch.allclose(torch.cat([o[0] for o in outs], dim=1), logits, atol=1e-4)


def test_auroc_is_the_share_of_positive_negative_pairs_ranked_right():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # ties on purpose
    labels = (rng.random(200) < 0.3).astype(np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(scores, labels) == pytest.approx(brute)
    assert auroc(scores, np.zeros(200)) is None


def test_an_early_halt_is_a_confident_stop_before_the_turn_ends():
    probs = [np.array([0.1, 0.2, 0.9]), np.array([0.7, 0.1, 0.95]), np.array([0.2, 0.3])]
    logits = [np.log(p / (1 - p)) for p in probs]
    labels = [np.array([0, 0, 1.0]), np.array([0, 0, 1.0]), np.array([0, 1.0])]
    m = score(logits, labels, 0.5)
    assert m["early_halt_rate"] == {"value": 1 / 3, "n": 3} and m["halt_auroc"]["n"] == 8
    assert score(logits, labels, 0.75)["early_halt_rate"]["value"] == 0.0


def test_auroc_ranks_logits_a_saturated_probability_would_tie():
    logits = [np.array([18.0, 25.0, 30.0])]
    labels = [np.array([0, 0, 1.0])]
    assert score(logits, labels, 0.5)["halt_auroc"]["value"] == 1.0  # sigmoid rounds all three to 1.0 in float32


def test_a_release_with_a_halt_head_initialises_the_next_version(tmp_path):
    import json as _json

    from safetensors.torch import save_file

    from runtime.model.hf_export import hf_config
    from runtime.model.pretrained import load_pretrained

    model = Student(ARCH, seed=0)
    (tmp_path / "config.json").write_text(_json.dumps(hf_config(ARCH, {"bos": 1, "eos": 2, "pad": 0})))
    save_file({("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v.contiguous()
               for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    expected = {k: tuple(v.shape) for k, v in Student(ARCH, seed=1).state_dict().items()}
    state, _ = load_pretrained(tmp_path, ARCH, expected, optional=("judge_head.", "halt_head."))
    assert torch.equal(state["halt_head.weight"], model.halt_head.weight)
    # a student without the head (or with another shape) takes the rest and keeps its seeded head
    plain = ARCH.model_copy(update={"halt_head": False})
    expected = {k: tuple(v.shape) for k, v in Student(plain, seed=1).state_dict().items()}
    state, _ = load_pretrained(tmp_path, plain, expected, optional=("judge_head.", "halt_head."))
    assert "halt_head.weight" not in state and "embed_tokens.weight" in state


ROOT = Path(__file__).resolve().parents[2]
DRAFTER = (ROOT / "specs" / "toy-drafter.yaml").read_text(encoding="utf-8")


def _spec(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").symlink_to(ROOT / "specs" / "data", target_is_directory=True)
    (tmp_path / "toy.yaml").symlink_to(ROOT / "specs" / "toy.yaml")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    return spec


@pytest.mark.parametrize("old, new, path, anchor, message", [
    ("    halt: {weight: 0.1}\n", "", "halt", "threshold: 0.5", "trained only by training.losses.halt"),
    ("halt:\n  threshold: 0.5\n", "", "training.losses.halt", "halt: {weight: 0.1}", "this spec has none"),
    ("halt:\n  threshold: 0.5\n", "", "gates[7].metric", "eval.halt_auroc", "measures the halt head"),
    ("decode_cache: state", "decode_cache: explicit", "export.coreml.decode_cache", "decode_cache: explicit",
     "states only"),
], ids=["head-without-term", "term-without-head", "gate-without-head", "explicit-cache"])
def test_the_head_and_its_term_come_together(tmp_path, old, new, path, anchor, message):
    assert DRAFTER.count(old) == 1
    text = DRAFTER.replace(old, new)
    problems = problems_of(_spec(tmp_path, text))
    hit = [p for p in problems if p.path == path and message in p.message]
    assert hit and hit[0].hint and hit[0].line == expected_line(text, anchor), [p.format() for p in problems]


def test_a_draft_cut_by_the_halt_head_still_gives_the_worker_s_greedy_output():
    from runtime.generation.speculative import greedy, speculate

    worker = Student(ARCH.model_copy(update={"halt_head": False}), seed=1).eval()
    drafter = Student(ARCH, seed=2).eval()
    with torch.no_grad():
        drafter.halt_head.bias.fill_(0.0)  # about half the positions halt: drafts are cut often
    prompt = [1, 20, 21, 22]
    ref = greedy(worker, prompt, 20, eos=2)
    plain = speculate(drafter, worker, prompt, 4, 20, 2)
    halted = speculate(drafter, worker, prompt, 4, 20, 2, halt=drafter.halt_outputs, threshold=0.5)
    assert plain.tokens == halted.tokens == ref
    assert halted.halted > 0 and halted.drafted < plain.drafted
