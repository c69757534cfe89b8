"""What a judge spec must and must not say (compiler/reading/rules_judge.py), as edits of the shipped toy specs:
each is refused at validate with the key path, the line and a hint, never accepted and failing in a job."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.output.build import compile_one
from tests.compiler.test_invalid_specs import expected_line, problems_of

ROOT = Path(__file__).resolve().parents[2]
JUDGE = (ROOT / "specs" / "toy-judge.yaml").read_text(encoding="utf-8")
WORKER = (ROOT / "specs" / "toy.yaml").read_text(encoding="utf-8")
TEACHER = "teacher:\n  kind: hf_local\n  path: data/toy\n  top_k: 8\n\n"


def _spec(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").symlink_to(ROOT / "specs" / "data", target_is_directory=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    return spec


CASES = [
    ("teacher-on-a-judge", JUDGE, "data:\n  train:", TEACHER + "data:\n  train:", "teacher", "kind: hf_local",
     "not from a teacher job"),
    ("token-term-on-a-judge", JUDGE, "    pairwise: {weight: 1.0}\n", "    pairwise: {weight: 1.0}\n    ce_ground_truth: {weight: 0.1}\n",
     "training.losses.ce_ground_truth", "ce_ground_truth: {weight: 0.1}", "token-level term"),
    ("judge-without-pairwise", JUDGE, "    pairwise: {weight: 1.0}\n", "", "training.losses", "clauses: {weight: 0.5}",
     "must train its verdict score"),
    ("judge-with-decode", JUDGE, "  decode: {enabled: false}", "  decode: {enabled: true, cache_len: 256}",
     "shapes.decode.enabled", "decode: {enabled: true", "one prefill"),
    ("judge-without-section", JUDGE, "judge:\n  clauses: [privacy, format]\n  objective: bradley_terry\n", "", "role",
     "role: judge", "needs a judge section"),
    ("worker-metric-on-a-judge", JUDGE, '  - {metric: package.size_mb, op: "<=", value: 1.0}',
     '  - {metric: package.size_mb, op: "<=", value: 1.0}\n  - {metric: eval.json_validity, op: ">=", value: 0.5}',
     "gates[9].metric", "eval.json_validity", "measured for role worker / drafter"),
    ("judge-term-on-a-worker", WORKER, "    kl: {weight: 1.0, temperature: 2.0}\n",
     "    kl: {weight: 1.0, temperature: 2.0}\n    pairwise: {weight: 1.0}\n", "training.losses.pairwise",
     "pairwise: {weight: 1.0}", "trains a judge's verdict head"),
    ("judge-metric-on-a-worker", WORKER, "gates:\n", 'gates:\n  - {metric: eval.pairwise_accuracy, op: ">=", value: 0.8}\n',
     "gates[0].metric", "eval.pairwise_accuracy", "measured for role judge"),
    ("drafter-metric-on-a-judge", JUDGE, "gates:\n", 'gates:\n  - {metric: speculate.acceptance_rate, op: ">=", value: 0.5}\n',
     "gates[0].metric", "speculate.acceptance_rate", "measured for role drafter"),
    ("clause-twice", JUDGE, "  clauses: [privacy, format]", "  clauses: [privacy, format, privacy]", "judge.clauses[2]",
     "clauses: [privacy, format, privacy]", "listed twice"),
    ("short-last-stage", JUDGE, "    - {until_step: 250, seq_len: 256}", "    - {until_step: 250, seq_len: 128}",
     "training.curriculum[0].seq_len", "seq_len: 128}", "would never be trained"),
    ("registry-on-a-judge", JUDGE, "  eval: data/toy-judge/eval.jsonl\n",
     "  eval: data/toy-judge/eval.jsonl\n  tool_registry: data/toy/tools.json\n", "data.tool_registry",
     "tool_registry: data/toy/tools.json", "call no tools"),
    ("halt-metric-without-halt", WORKER, "gates:\n", 'gates:\n  - {metric: parity.halt_fp16_snr_db, op: ">=", value: 30}\n',
     "gates[0].metric", "parity.halt_fp16_snr_db", "measures the halt head"),
]


@pytest.mark.parametrize("name, base, old, new, path, anchor, message", CASES, ids=[c[0] for c in CASES])
def test_a_judge_rule_is_enforced_at_validate(tmp_path, name, base, old, new, path, anchor, message):
    assert base.count(old) == 1, old
    text = base.replace(old, new)
    problems = problems_of(_spec(tmp_path, text))
    hit = [p for p in problems if p.path == path and message in p.message]
    assert hit, [p.format() for p in problems]
    assert hit[0].hint and hit[0].line == expected_line(text, anchor)


def test_a_worker_without_a_teacher_is_refused(tmp_path):
    start = WORKER.index("teacher:\n")
    end = WORKER.index("\n\n", start) + 2
    problems = problems_of(_spec(tmp_path, WORKER[:start] + WORKER[end:]))
    assert any(p.path == "teacher" and "distils from a teacher" in p.message for p in problems)


def test_the_judge_compiles_to_a_plan_without_teacher_jobs_and_with_a_verdict_output():
    c = compile_one(str(ROOT / "specs" / "toy-judge.yaml"), [], str(ROOT / "generated"))
    kinds = {j.job.kind for j in c.jobs}
    assert not kinds & {"teacher", "generate", "speculate"}
    export = c.job("export-prefill").job.params
    assert [o.name for o in export.function.outputs] == ["logits", "judge"]
    assert export.function.outputs[1].shape == [1, "T", 3] and export.architecture.judge_outputs == 3
    assert c.job("train").job.params.training.judge.clauses == ["privacy", "format"]


def test_a_worker_without_a_tool_registry_is_refused(tmp_path):
    text = WORKER.replace("  tool_registry: data/toy/tools.json\n", "")
    problems = problems_of(_spec(tmp_path, text))
    assert any(p.path == "data" and "tool registry" in p.message for p in problems), [p.format() for p in problems]


def test_a_drafter_without_a_teacher_gets_findings_not_a_traceback(tmp_path):
    drafter = (ROOT / "specs" / "toy-drafter.yaml").read_text(encoding="utf-8")
    start = drafter.index("teacher:\n")
    text = drafter[:start] + drafter[drafter.index("\n\n", start) + 2:]
    (tmp_path / "toy.yaml").symlink_to(ROOT / "specs" / "toy.yaml")
    problems = problems_of(_spec(tmp_path, text))
    assert any(p.path == "teacher" and "distils from a teacher" in p.message for p in problems)
