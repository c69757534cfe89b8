"""The worker package's `verify` function in the reference interpreter: parity with torch, and greedy
speculative decoding with a drafter package and the worker package that reproduces the worker's own
greedy output (prefill then decode), token for token."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runtime.generation.speculative import speculate_packages
from runtime.speed.backends import InterpreterBackend
from tests.verify.test_broken_packages import base  # noqa: F401  (the reduced toy's good package: the drafter)

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")
PROMPT = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]


def test_verify_matches_torch_in_the_interpreter(toy_package: SimpleNamespace) -> None:
    from runtime.verify.parity import measure

    fn, _ = toy_package.functions["verify"]
    report, _ = measure(toy_package.package, fn, toy_package.checkpoint, samples=2, decode_steps=8, seed=3)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert report["metrics"]["snr_db"]["value"] > 55 and report["metrics"]["top1_agreement"]["value"] == 1.0


def _backend(package, functions, cache_len=256) -> InterpreterBackend:
    return InterpreterBackend(package, functions, "all", "state", cache_len)


@pytest.mark.parametrize("drafter_is", ["another model", "the worker"])
def test_speculative_decoding_through_the_interpreter_is_the_workers_greedy_output(
        toy_package: SimpleNamespace, base: SimpleNamespace, drafter_is: str) -> None:  # noqa: F811
    worker = _backend(toy_package.package, ["prefill_64", "decode", "verify"])
    drafter = worker if drafter_is == "the worker" else _backend(base.good, ["prefill_64", "decode"])
    try:
        result, reference = speculate_packages(drafter, worker, PROMPT, "prefill_64", 64, 0, k=4, max_new=24, eos=2,
                                               cache_len=256)
    finally:
        worker.close()
        if drafter is not worker:
            drafter.close()
    assert result.tokens == reference and len(result.tokens) >= 2
    assert sum(result.per_step) + 1 == len(result.tokens)  # the first token comes from the worker's prefill
    assert 0 <= result.accepted <= result.drafted == 4 * result.steps
    if drafter_is == "the worker":
        assert result.acceptance_rate == 1.0 and set(result.per_step[:-1]) == {5}


class _HaltEvery(InterpreterBackend):
    """The drafter package, with its halt logit set high on every `every`-th decode: the drafts are cut short as a
    halt head would cut them (the toy drafter package here has no halt head; the cut is what is tested)."""

    def __init__(self, *args, every: int, **kw):
        super().__init__(*args, **kw)
        self.every, self.calls = every, 0

    def decode(self, token, position, state):
        out = super().decode(token, position, state)
        self.calls += 1
        self.last_halt = 10.0 if self.calls % self.every == 0 else -10.0
        return out


def test_drafts_cut_by_a_halt_still_give_the_workers_greedy_output(toy_package: SimpleNamespace,
                                                                   base: SimpleNamespace) -> None:  # noqa: F811
    worker = _backend(toy_package.package, ["prefill_64", "decode", "verify"])
    drafter = _HaltEvery(base.good, ["prefill_64", "decode"], "all", "state", 256, every=2)
    try:
        result, reference = speculate_packages(drafter, worker, PROMPT, "prefill_64", 64, 0, k=4, max_new=24, eos=2,
                                               cache_len=256, halt_threshold=0.5)
    finally:
        worker.close()
        drafter.close()
    assert result.tokens == reference and len(result.tokens) >= 2
    assert result.halted > 0 and result.drafted < 4 * result.steps
    assert 0 <= result.accepted <= result.drafted
