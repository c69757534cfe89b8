"""The documented catalogue of gate metrics: unit, valid range, operators, producer.

Gates may only name metrics listed here; the compiler checks the operator and the threshold
against the metric's kind (a rate lies in [0, 1], a count is a whole number >= 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # rate | db | count | megabytes | relative | milliseconds | per_second | per_step
    producer: str  # job kind that measures it; "speed": a speed report from a device (runtime/speed)
    description: str
    has_n: bool  # measured over samples, so min_n applies
    roles: tuple[str, ...] = ()  # the roles whose jobs produce it (empty: every role)

    @property
    def bounds(self) -> tuple[float, float]:
        return KIND_BOUNDS[self.kind]

    @property
    def ops(self) -> tuple[str, ...]:
        return KIND_OPS[self.kind]


KIND_BOUNDS = {
    "per_step": (0.0, math.inf),
    "rate": (0.0, 1.0),
    "db": (-math.inf, math.inf),
    "count": (0.0, math.inf),
    "megabytes": (0.0, math.inf),
    "relative": (-1.0, math.inf),
    "milliseconds": (0.0, math.inf),
    "per_second": (0.0, math.inf),
}
ORDER_OPS = (">=", ">", "<=", "<")
KIND_OPS = {
    "per_step": (">=", ">"),
    "rate": ORDER_OPS + ("==",),
    "db": (">=", ">"),
    "count": ("==", "<=", "<"),
    "megabytes": ("<=", "<"),
    "relative": ("<=", "<"),
    "milliseconds": ("<=", "<"),
    "per_second": (">=", ">"),
}

NOT_JUDGE = ("worker", "drafter")  # generation metrics: a judge's eval measures verdicts instead
JUDGE = ("judge",)

_METRICS = [
    Metric("parity.snr_db", "db", "parity", "SNR of package (reference interpreter) vs torch with the package's own weights: conversion fidelity.", False),
    Metric("parity.top1_agreement", "rate", "parity", "Top-1 agreement of package vs torch with the package's own weights, non-padded positions.", False),
    Metric("parity.quant_snr_db", "db", "parity", "SNR of package vs the trained fp32 checkpoint: quantization loss.", False),
    Metric("parity.quant_top1_agreement", "rate", "parity", "Top-1 agreement of package vs the trained fp32 checkpoint.", False),
    Metric("parity.fp16_snr_db", "db", "parity", "SNR of the package in fp16-storage emulation vs torch with the package's own weights.", False),
    Metric("parity.fp16_top1_agreement", "rate", "parity", "Top-1 agreement of the package in fp16-storage emulation vs torch with the package's own weights.", False),
    Metric("parity.nonfinite_intermediates", "count", "parity", "Ops whose output is inf or NaN when the package runs in fp16-storage emulation.", False),
    Metric("parity.judge_snr_db", "db", "parity", "Judge: SNR of the package's verdict head outputs (reference interpreter) vs torch with the package's own weights.", False, JUDGE),
    Metric("parity.judge_fp16_snr_db", "db", "parity", "Judge: SNR of the verdict head outputs in fp16-storage emulation vs torch with the package's own weights.", False, JUDGE),
    Metric("parity.judge_sign_agreement", "rate", "parity", "Judge: share of verdict head outputs (score and clause logits) whose sign the fp16 package keeps from the trained checkpoint: the verdicts and flags it would give.", False, JUDGE),
    Metric("parity.halt_snr_db", "db", "parity", "Halt head: SNR of the package's halt outputs (reference interpreter) vs torch with the package's own weights.", False, NOT_JUDGE),
    Metric("parity.halt_fp16_snr_db", "db", "parity", "Halt head: SNR of the halt outputs in fp16-storage emulation vs torch with the package's own weights.", False, NOT_JUDGE),
    Metric("parity.halt_sign_agreement", "rate", "parity", "Halt head: share of halt logits whose sign (stop at probability 0.5) the fp16 package keeps from the trained checkpoint.", False, NOT_JUDGE),
    Metric("parity.coreml_snr_db", "db", "parity", "SNR of CoreML predictions vs golden outputs (needs macOS).", False),
    Metric("eval.json_validity", "rate", "eval", "Fraction of emitted tool calls whose arguments parse as JSON and match the tool schema.", True, NOT_JUDGE),
    Metric("eval.tool_selection", "rate", "eval", "Fraction of tool-needing samples where the right tool is called first.", True, NOT_JUDGE),
    Metric("eval.integration_f1_lax", "rate", "eval", "Token F1 of integration spans against the reference, lax matching.", True, NOT_JUDGE),
    Metric("eval.integration_f1_strict", "rate", "eval", "Exact-span F1 of integration spans against the reference.", True, NOT_JUDGE),
    Metric("eval.privacy_ok_rate", "rate", "eval", "Fraction of personal-data samples whose output echoes no personal data.", True, NOT_JUDGE),
    Metric("eval.control_tool_calls", "count", "eval", "Tool calls emitted on control samples that must not call a tool.", True, NOT_JUDGE),
    Metric("eval.halt_auroc", "rate", "eval", "Halt head: area under the ROC curve of its probability at every eval target position against whether the next token ends the turn (eos or the tool-call end), teacher-forced (n: positions).", True, NOT_JUDGE),
    Metric("eval.early_halt_rate", "rate", "eval", "Halt head: eval samples with a target position whose next token does not end the turn but whose halt probability reaches halt.threshold: a drafter would stop there too early (n: samples).", True, NOT_JUDGE),
    Metric("eval.pairwise_accuracy", "rate", "eval", "Judge: preference pairs whose verdict prefers the chosen response, each pair scored in both orders (n: pair orders).", True, JUDGE),
    Metric("eval.position_bias_rate", "rate", "eval", "Judge: preference pairs whose verdict picks the same position (A or B) in both orders, i.e. flips its preferred response when the two are swapped (n: pairs).", True, JUDGE),
    Metric("eval.clause_f1_micro", "rate", "eval", "Judge: micro-averaged F1 of the clause labels (a clause is flagged when its logit > 0) over clause-labelled rows (n: rows).", True, JUDGE),
    Metric("eval.clause_f1_min", "rate", "eval", "Judge: the lowest per-clause F1 among clauses with a positive label or prediction (each clause's F1 is in the eval report; n: rows).", True, JUDGE),
    Metric("eval.verdict_json_validity", "rate", "eval", "Judge: eval rows whose verdict JSON (preferred, probability, clause probabilities) is finite and valid against the published verdict schema (n: rows).", True, JUDGE),
    Metric("generate.fixture_hit_rate", "rate", "generate", "Share of the teacher's tool calls that a prompt's fixtures answered (n: calls).", True, NOT_JUDGE),
    Metric("generate.failure_rate", "rate", "generate", "Share of valid prompts without a kept transcript (n: prompts).", True, NOT_JUDGE),
    Metric("speculate.acceptance_rate", "rate", "speculate", "Drafted tokens the worker accepted in greedy speculative decoding of the eval prompts (n: drafted tokens).", True, ("drafter",)),
    Metric("speculate.tokens_per_step", "per_step", "speculate", "Tokens emitted per worker verify call: accepted drafts plus the worker's own (n: calls).", True, ("drafter",)),
    Metric("speculate.worker_mismatches", "count", "speculate", "Eval prompts whose speculative output differs from the worker's own greedy output (0 unless near-ties; n: prompts).", True, ("drafter",)),
    Metric("package.size_mb", "megabytes", "convert", "Size of the .mlpackage on disk (MiB).", False),
    Metric("speed.ttft_p50_ms", "milliseconds", "speed", "Median time to first token on device, prefill at the smallest shape that holds the prompt (a speed report from `modelspec bench-device`, docs/speed.md).", True),
    Metric("speed.ttft_p90_ms", "milliseconds", "speed", "90th percentile time to first token on device (speed report).", True),
    Metric("speed.tps_p50", "per_second", "speed", "Median decode tokens per second on device, greedy, KV cache in CoreML states (speed report).", True),
    Metric("speed.first_tool_call_p50_ms", "milliseconds", "speed", "Median time from the request to the end of the first complete tool call, on prompts that call a tool (speed report).", True),
    Metric("speed.ttft_p50_regression", "relative", "speed", "Relative median TTFT change against the newest earlier report of another package on the same chip and profile (a slowdown is positive).", True),
    Metric("speed.tps_p50_regression", "relative", "speed", "Relative median decode speed drop against the newest earlier report of another package on the same chip and profile (a slowdown is positive).", True),
]
CATALOGUE: dict[str, Metric] = {m.name: m for m in _METRICS}
