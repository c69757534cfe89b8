"""User strings reach generated files as data, never as templates or shell: template syntax,
shell metacharacters, backticks and newlines in descriptions and reasons come out inert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compiler.output.build import build_outputs, compile_one
from compiler.planning.compile import contract_files
from compiler.core.errors import SpecError

SPECS = Path(__file__).resolve().parents[2] / "specs"
HOSTILE = "{{ 7*7 }} {% for x in range(3) %}X{% endfor %} $(touch /tmp/pwned) `id` ; rm -rf / && echo \\\"q\\\""


def _spec(tmp_path: Path, old: str, new: str) -> Path:
    text = (SPECS / "toy.yaml").read_text()
    assert old in text
    shutil.copytree(SPECS / "data", tmp_path / "data", dirs_exist_ok=True)
    path = tmp_path / "hostile.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_template_and_shell_syntax_in_descriptions_is_rendered_inert(tmp_path: Path) -> None:
    path = _spec(tmp_path, "description: Tiny tool-calling worker that runs end to end on a laptop CPU.",
                 f'description: "{HOSTILE}"')
    compiled = compile_one(str(path), [], out_root=str(tmp_path / "generated"))
    readme = build_outputs([str(path)], [], str(tmp_path / "generated"))["toy-worker"]["README.md"]
    line = readme.splitlines()[3]  # the description, right under the title, markdown-escaped
    assert "7\\*7" in line and "for x in range" in line and "endfor" in line, line
    assert "49" not in line and "XXX" not in line, "the description was evaluated as a template"
    assert not Path("/tmp/pwned").exists()
    assert compiled.spec.description == HOSTILE.replace('\\"', '"')
    for name, text in contract_files(compiled).items():
        if name.endswith(".json"):
            json.loads(text)  # still valid JSON with the hostile text inside


@pytest.mark.parametrize("name", ["../x", "/abs", "a b", "x;rm", "$(id)", "`id`", "a\nb", "CON", "."])
def test_hostile_names_are_spec_errors(tmp_path: Path, name: str) -> None:
    path = _spec(tmp_path, "name: toy-worker", f"name: {json.dumps(name)}")
    with pytest.raises(SpecError) as info:
        compile_one(str(path), [], out_root=str(tmp_path / "generated"))
    assert any(p.path == "name" for p in info.value.problems), [p.format() for p in info.value.problems]
    assert not (tmp_path / "generated").exists(), "nothing written"
