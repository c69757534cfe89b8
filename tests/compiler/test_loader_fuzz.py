"""Fuzzing the loader and validator (hypothesis): whatever the text, the answer is a spec error
with a position, or a valid spec; never a traceback, never a hang.

Two generators: arbitrary text over a YAML-heavy alphabet, and mutations of the real toy spec
(a line replaced, dropped, duplicated or re-indented; a value swapped for a hostile scalar).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.core.errors import SpecError
from compiler.reading.loader import load_text
from compiler.reading.validate import validate_doc

SPECS = Path(__file__).resolve().parents[2] / "specs"
TOY = (SPECS / "toy.yaml").read_text().splitlines()
YAML_CHARS = st.sampled_from(list(":-[]{},#&*!|>'\"%@` \n\t.0123456789abcdeftruenullx~?=<$()\\/") + ["\x00", "\u2028", "é"])
HOSTILE = st.sampled_from(["!!python/object/apply:os.system ['touch /tmp/pwned']", "*undefined", "&a [*a]", "{{ 7*7 }}",
                           "{% for x in y %}", "$(touch /tmp/pwned)", "`id`", "../../etc/passwd", "/etc/passwd", "~",
                           ".nan", "-.inf", "1e400", "0x10", "0o7", "'", '"', "[[[[[[", "{a: {b: {c:", "- - - -",
                           "9" * 400, "null", "yes", "NO", "<<: *x", "? complex key", "|\n  block", "\x07"])
settings.register_profile("fuzz", deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fuzz")


def _check(text: str) -> None:
    sentinel = Path("/tmp/pwned")
    assert not sentinel.exists()
    try:
        doc = load_text(text, "fuzz.yaml")
        validate_doc(doc, str(SPECS))
    except SpecError as exc:
        assert exc.problems, "a SpecError carries at least one problem"
        for p in exc.problems:
            assert p.line >= 1 and p.col >= 1 and p.message, p
    assert not sentinel.exists(), "nothing in a spec is ever executed"


@given(st.text(YAML_CHARS, max_size=400))
def test_arbitrary_text_is_a_spec_error_or_a_spec(text: str) -> None:
    _check(text)


@st.composite
def mutated_toy(draw) -> str:
    lines = list(TOY)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "drop", "dup", "indent", "hostile_key"]))
        if op == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(HOSTILE)}"
        elif op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 7)) + lines[i].lstrip()
        else:
            lines.insert(i, f"{draw(HOSTILE)}: 1")
        if not lines:
            break
    return "\n".join(lines) + "\n"


@given(mutated_toy())
def test_mutations_of_the_toy_spec_are_spec_errors_or_specs(text: str) -> None:
    _check(text)
