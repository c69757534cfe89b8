"""Every role runs the eval job, which reads the tool and think tokens: a judge or drafter spec without
them is refused at validate (naming each missing token), never accepted and then failing in eval."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.core.errors import SpecError
from compiler.reading.validate import validate_file
from compiler.schema.tokenizer import EVAL_MARKERS

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "specs" / "toy.yaml"
TOOL_LINES = ('    think_end: {text: "</think>", id: 4}\n', '    tool_call_start: {text: "<tool_call>", id: 5}\n',
              '    tool_call_end: {text: "</tool_call>", id: 6}\n', '    tool_result_start: {text: "<tool_result>", id: 7}\n',
              '    tool_result_end: {text: "</tool_result>", id: 8}\n')


def _spec(tmp_path: Path, role: str) -> Path:
    text = TOY.read_text().replace("role: worker", f"role: {role}")
    for line in TOOL_LINES:
        assert text.count(line) == 1, line
        text = text.replace(line, "")
    shutil.copytree(ROOT / "specs" / "data", tmp_path / "data", dirs_exist_ok=True)
    path = tmp_path / f"{role}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("role", ["judge", "drafter", "worker"])
def test_a_spec_without_the_eval_markers_is_refused_at_validate(tmp_path: Path, role: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_file(str(_spec(tmp_path, role)))
    missing = [p for p in info.value.problems if p.path == "tokenizer.special_tokens"]
    assert sorted(m.message.split("'")[1] for m in missing) == sorted(EVAL_MARKERS)
    assert all(f"the eval job reads it for every role (role {role})" in m.message for m in missing)


def test_the_cli_refuses_it_and_writes_nothing(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "judge")
    out = tmp_path / "generated"
    proc = subprocess.run([str(Path(sys.executable).parent / "modelspec"), "compile", str(spec), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing special token 'tool_result_start'" in proc.stderr, proc.stderr
    assert f"{spec}:" in proc.stderr and not out.exists()
