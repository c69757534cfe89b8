"""Greedy speculative decoding: the output is the worker's own greedy output, token for token, and
the acceptance counts add up. Real torch models: the student as drafter, a transformers Llama as worker."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compiler.planning.params import ArchitectureP
from runtime.generation.speculative import greedy, speculate
from runtime.model.student import Student

V, EOS = 96, 2
ARCH = ArchitectureP(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, mlp_hidden=64,
                     norm_eps=1e-6, rope_theta=10000.0, max_context=128, tie_embeddings=False)


def llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked logits: no near-ties for float noise to flip
    return model


@pytest.fixture(scope="module")
def models():
    worker = llama(1)
    student = Student(ARCH, seed=3).eval()
    with torch.no_grad():
        student.lm_head.weight.mul_(20.0)
    return (lambda ids: worker(input_ids=ids).logits), student


PROMPTS = [[1, 5, 9, 17], [1, 40, 41, 42, 43, 44, 7], [1, 88]]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_the_output_is_the_workers_greedy_output(models, k):
    worker, drafter = models
    for prompt in PROMPTS:
        ref = greedy(worker, prompt, 24, EOS)
        s = speculate(drafter, worker, prompt, k, 24, EOS)
        assert s.tokens == ref
        assert sum(s.per_step) == len(s.tokens) and s.steps == len(s.per_step)
        assert 0 <= s.accepted <= s.drafted <= k * s.steps and all(1 <= n <= k + 1 for n in s.per_step)


def test_a_drafter_that_is_the_worker_has_every_draft_accepted(models):
    worker, _ = models
    s = speculate(worker, worker, PROMPTS[0], 4, 20, EOS)
    assert s.tokens == greedy(worker, PROMPTS[0], 20, EOS) and s.acceptance_rate == 1.0
    assert s.per_step[:-1] == [5] * (len(s.per_step) - 1)  # k drafted + the worker's bonus token per call


def test_eos_ends_the_output_where_the_worker_would_stop(models):
    worker, drafter = models
    ref = greedy(worker, PROMPTS[1], 24, EOS)
    stop = ref[3]  # make that token the end of sequence: both stop right after its first occurrence
    expected = ref[: ref.index(stop) + 1]
    assert speculate(drafter, worker, PROMPTS[1], 4, 24, stop).tokens == greedy(worker, PROMPTS[1], 24, stop) == expected
