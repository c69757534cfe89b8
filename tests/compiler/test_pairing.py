"""A drafter names its worker (`drafts_for`); the compiler checks the pair and both READMEs name it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.core.errors import SpecError
from compiler.output.build import build_outputs, compile_one

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    """The shipped drafter and worker specs in a folder of their own."""
    for name in ("drafter-4b.yaml", "worker-9b.yaml"):
        shutil.copy(SPECS / name, tmp_path / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def refused(path: Path) -> list[str]:
    with pytest.raises(SpecError) as exc:
        compile_one(str(path), [])
    return [f"{p.path}: {p.message}" for p in exc.value.problems]


def test_the_shipped_pair_compiles_and_both_readmes_name_it(pair: Path):
    out = build_outputs([str(pair / "drafter-4b.yaml"), str(pair / "worker-9b.yaml")], [], str(pair / "generated"))
    drafter, worker = out["drafter-4b"]["README.md"], out["worker-9b"]["README.md"]
    assert "- drafts for: `worker-9b` 1.0.0 (`worker-9b.yaml`)" in drafter and "this context (4096) fits the worker's (16384)" in drafter
    assert "- drafted for by: `drafter-4b` (`drafter-4b.yaml`" in worker


@pytest.mark.parametrize("old, new, problem", [
    ("    tool_call_end: {text: \"</tool_call>\", id: 32003}", "    tool_call_end: {text: \"</tool_call>\", id: 32006}",
     "tokenizer.special_tokens.tool_call_end: special token 'tool_call_end' is '</tool_call>' id 32006 here and "
     "'</tool_call>' id 32003 in worker worker-9b"),
    ("  source: {kind: pretrained, path: /mnt/models/tokenizers/worker-32k}",
     "  source: {kind: pretrained, path: /mnt/models/tokenizers/drafter-32k}",
     "tokenizer.source: the drafter's tokenizer source differs from worker worker-9b's"),
    ("  max_context: 4096", "  max_context: 32768", "architecture.max_context: max_context 32768 exceeds worker worker-9b's 16384"),
    ("  vocab_size: 32768  ", "  vocab_size: 32832  ", "architecture.vocab_size: vocab_size 32832 differs from worker worker-9b's 32768"),
    ("drafts_for: worker-9b.yaml", "drafts_for: worker-8b.yaml", "drafts_for: no worker spec at 'worker-8b.yaml'"),
])
def test_a_pair_that_disagrees_is_refused_at_the_drafter(pair: Path, old: str, new: str, problem: str):
    edit(pair / "drafter-4b.yaml", old, new)
    assert any(p.startswith(problem) for p in refused(pair / "drafter-4b.yaml")), refused(pair / "drafter-4b.yaml")


def test_the_chat_template_is_compared_by_content(pair: Path):
    (pair / "a.jinja").write_text("{{ messages }}")
    (pair / "b.jinja").write_text("{{ messages }}")
    edit(pair / "worker-9b.yaml", "  source: {kind: pretrained, path: /mnt/models/tokenizers/worker-32k}\n",
         "  source: {kind: pretrained, path: /mnt/models/tokenizers/worker-32k}\n  chat_template: a.jinja\n")
    edit(pair / "drafter-4b.yaml", "  source: {kind: pretrained, path: /mnt/models/tokenizers/worker-32k}\n",
         "  source: {kind: pretrained, path: /mnt/models/tokenizers/worker-32k}\n  chat_template: b.jinja\n")
    compile_one(str(pair / "drafter-4b.yaml"), [])  # two files, one template
    (pair / "b.jinja").write_text("{{ messages | reverse }}")
    assert any("chat template differs from worker worker-9b's" in p for p in refused(pair / "drafter-4b.yaml"))


def test_only_a_drafter_drafts_and_only_for_a_worker(pair: Path):
    edit(pair / "drafter-4b.yaml", "role: drafter", "role: judge")
    assert any("drafts_for names a worker to draft for, and this spec's role is judge" in p for p in refused(pair / "drafter-4b.yaml"))
    edit(pair / "drafter-4b.yaml", "role: judge", "role: drafter")
    shutil.copy(SPECS / "judge-4b.yaml", pair / "judge-4b.yaml")
    edit(pair / "drafter-4b.yaml", "drafts_for: worker-9b.yaml", "drafts_for: judge-4b.yaml")
    assert any("judge-4b.yaml is a judge, not a worker" in p for p in refused(pair / "drafter-4b.yaml"))
    edit(pair / "worker-9b.yaml", "  d_model: ", "  d_model: 1")
    edit(pair / "drafter-4b.yaml", "drafts_for: judge-4b.yaml", "drafts_for: worker-9b.yaml")
    assert any("the worker spec 'worker-9b.yaml' does not validate" in p for p in refused(pair / "drafter-4b.yaml"))


def test_speculative_is_for_a_drafter_of_a_worker_taught_by_it(pair: Path):
    out = build_outputs([str(pair / "drafter-4b.yaml")], [], str(pair / "generated"))
    plan = out["drafter-4b"]["plan.json"]
    assert '"id": "speculate"' in plan and '"k": 4' in plan
    text = (pair / "drafter-4b.yaml").read_text()
    start, end = text.index("teacher:\n"), text.index("\ndata:\n")
    toy = (SPECS / "toy.yaml").read_text()
    trained = toy[toy.index("teacher:\n"): toy.index("\ndata:\n")]  # a teacher trained from scratch
    (pair / "drafter-4b.yaml").write_text(text[:start] + trained + text[end:])
    assert any(p.startswith("teacher.kind: the speculate job runs the worker as the drafter's teacher")
               for p in refused(pair / "drafter-4b.yaml"))


def test_speculative_without_a_worker_is_refused(tmp_path: Path):
    shutil.copy(SPECS / "drafter-4b.yaml", tmp_path / "d.yaml")
    edit(tmp_path / "d.yaml", "drafts_for: worker-9b.yaml   # ", "# ")
    assert any(p.startswith("speculative: speculative decoding is measured for a drafter against the worker")
               for p in refused(tmp_path / "d.yaml"))

