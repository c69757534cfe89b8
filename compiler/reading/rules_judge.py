"""The judge's rules: what a judge spec must and must not say, and what only a judge may.

A judge learns from preference pairs and clause labels through its verdict head (docs/roles.md#judge):
its loss terms are `pairwise`, `clauses` and `verdict_kd`; the token-level terms read target tokens
that judge rows do not have, and its KD comes from the teacher verdicts in the data rows, so it has no
`teacher` block. It is one prefill: no decode function, no prompts to generate from. Every other
role keeps its teacher and may not use the judge's terms or section.
"""

from __future__ import annotations

from typing import Iterator

from compiler.analysis.catalogue import CATALOGUE
from compiler.core.errors import Path
from compiler.schema.spec import Spec
from compiler.schema.training import loss_used

Finding = tuple[Path, str, str | None]
JUDGE_TERMS = ("pairwise", "clauses", "verdict_kd")
TOKEN_TERMS = ("kl", "ce_teacher", "ce_ground_truth", "tool_name", "json_args", "integration", "length_kd", "early_tool",
               "halt")


def judge(spec: Spec) -> Iterator[Finding]:
    losses = spec.training.losses
    for i, gate in enumerate(spec.gates):
        metric = CATALOGUE.get(gate.metric)
        if metric is not None and metric.roles and spec.role not in metric.roles:
            fit = sorted(m.name for m in CATALOGUE.values() if m.producer == metric.producer and spec.role in (m.roles or (spec.role,)))
            yield (("gates", i, "metric"), f"{gate.metric} is measured for role {' / '.join(metric.roles)}, and this spec's "
                   f"role is {spec.role}: the gate could never pass", f"{metric.producer} metrics for a {spec.role}: {fit}")
    if spec.role != "judge":
        if spec.judge is not None:
            yield (("judge",), f"the judge section is for role judge, and this spec's role is {spec.role}",
                   "set role: judge, or remove judge")
        for name in JUDGE_TERMS:
            if getattr(losses, name) is not None:
                yield (("training", "losses", name), f"'{name}' trains a judge's verdict head; this spec's role is {spec.role}",
                       f"remove training.losses.{name}, or set role: judge with a judge section")
        if spec.data.tool_registry is None:
            yield (("data",), f"a {spec.role}'s samples are checked against the tool registry, and data has none",
                   "add data.tool_registry: <tools.json> (specs/data/toy/README.md)")
        if spec.teacher is None:
            yield (("teacher",), f"a {spec.role} distils from a teacher, and this spec has none",
                   "add teacher: {kind: hf_local, path: ...}, {kind: train, ...} or {kind: openai_compatible, ...} "
                   "(docs/teachers.md)")
        return
    if spec.judge is None:
        yield (("role",), "a judge needs a judge section: the clauses it labels and its pairwise objective",
               "add judge: {clauses: [privacy, accuracy], objective: bradley_terry} (docs/roles.md#judge)")
    else:
        seen: set[str] = set()
        for i, name in enumerate(spec.judge.clauses):
            if name in seen:
                yield (("judge", "clauses", i), f"clause '{name}' is listed twice: each clause is one output of the "
                       "verdict head", "list each clause once")
            seen.add(name)
    last = spec.training.curriculum[-1].seq_len
    if last < max(spec.shapes.prefill):
        yield (("training", "curriculum", len(spec.training.curriculum) - 1, "seq_len"),
               f"a judge reads its verdict at a row's last token, so rows longer than the last stage's seq_len {last} "
               f"would never be trained (the dataset keeps rows up to {max(spec.shapes.prefill)} tokens)",
               f"end the curriculum at seq_len {max(spec.shapes.prefill)}")
    if spec.teacher is not None:
        yield (("teacher",), "a judge distils from the teacher verdicts written in its data rows, not from a teacher job",
               "remove teacher, and give rows a teacher field: {preference: p} or {clauses: {name: p}} "
               "(docs/roles.md#judge-data)")
    for name in TOKEN_TERMS:
        if getattr(losses, name) is not None:
            yield (("training", "losses", name), f"'{name}' is a token-level term, and judge rows have no target tokens: "
                   "the judge is trained through its verdict head", "use pairwise, clauses and verdict_kd (docs/roles.md#judge)")
    if not loss_used(losses.pairwise):
        yield (("training", "losses"), "a judge must train its verdict score: training.losses.pairwise is missing or 0",
               "add pairwise: {weight: 1.0}")
    if spec.shapes.decode.enabled:
        yield (("shapes", "decode", "enabled"), "a judge reads its verdict from one prefill and exports no decode function",
               "set shapes.decode.enabled: false")
    if spec.data.prompts is not None:
        yield (("data", "prompts"), "a judge has no teacher to answer prompts", "remove data.prompts")
    if spec.data.tool_registry is not None:
        yield (("data", "tool_registry"), "a judge's rows call no tools: its dataset job would not read the registry",
               "remove data.tool_registry")
