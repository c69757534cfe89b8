"""Hostile inputs to the YAML loader: each is refused with a `SpecError`, fast and in bounded memory.

The loader enforces its limits (file size, nesting depth, scalar length, alias expansion) while
parsing, before any value is built; these tests pin that down. Cases marked
(formerly strict xfails) were loader bugs: the input escapes as a non-`SpecError` exception, which
the CLI reports as an internal error (exit 3).
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from compiler.core.errors import SpecError
from compiler.reading.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_SCALAR_CHARS, load_text
from compiler.reading.validate import validate_file

TOY = Path(__file__).resolve().parents[2] / "specs" / "toy.yaml"


def rejected(path: Path, *, max_seconds: float = 20.0, max_peak_mb: float = 50.0) -> SpecError:
    """Validate `path`; it must raise a SpecError (never RecursionError), in bounded time and memory. The time
    bound catches blowups (a billion laughs never finishes), not speed: 100,000 nesting levels parse in ~2 s
    under tracemalloc alone and took over 5 s on 2 cores shared with the rest of the suite."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        validate_file(str(path))
    except SpecError as exc:
        error = exc
    except RecursionError as exc:  # pragma: no cover - reported as a failure
        pytest.fail(f"RecursionError instead of a SpecError: {exc}")
    else:  # pragma: no cover
        pytest.fail("accepted")
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < max_seconds, f"took {elapsed:.2f} s"
    assert peak < max_peak_mb * 1e6, f"peak traced memory {peak / 1e6:.1f} MB"
    assert error.problems
    for p in error.problems:
        assert p.file == str(path) and p.line >= 1 and p.col >= 1
    return error


def messages(error: SpecError) -> str:
    return "\n".join(p.message for p in error.problems)


def write(tmp_path: Path, content: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def billion_laughs(levels: int = 9, fan_out: int = 10) -> str:
    lines = ["modelspec: 1", "l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_rejected_fast_in_bounded_memory(tmp_path):
    text = billion_laughs()  # 10**10 leaves once expanded
    assert len(text) < 1000
    error = rejected(write(tmp_path, text), max_seconds=2.0, max_peak_mb=50.0)
    assert "expands to more than" in messages(error)
    assert all(p.path == "<root>" for p in error.problems)


def test_alias_bomb_inside_a_real_spec(tmp_path):
    toy = TOY.read_text(encoding="utf-8")
    bomb = "bomb:\n" + "".join(f"  {line}\n" for line in billion_laughs().splitlines()[1:])
    text = toy.replace("\ndescription: ", "\n" + bomb + "description: ", 1)
    error = rejected(write(tmp_path, text), max_seconds=2.0)
    assert "expands to more than" in messages(error)


@pytest.mark.parametrize(
    "kind, text",
    [
        ("flow-sequences", "modelspec: 1\na: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("flow-mappings", "modelspec: 1\na: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n"),
        ("unclosed-flow-sequences", "modelspec: 1\na: " + "[" * 100_000 + "\n"),
        ("block-sequences", "modelspec: 1\na:\n" + "- " * 100_000 + "x\n"),
    ],
)
def test_deep_nesting_is_rejected_without_recursion_error(kind, text, tmp_path):
    error = rejected(write(tmp_path, text))
    assert f"nesting deeper than {MAX_DEPTH} levels" in messages(error)


def test_nesting_at_the_limit_is_fine(tmp_path):
    """The depth limit is a limit, not an off-by-a-lot: 60 levels load (then fail schema checks)."""
    text = "modelspec: 1\na: " + "[" * 60 + "]" * 60 + "\n"
    error = rejected(write(tmp_path, text))
    assert "nesting deeper" not in messages(error)


def test_deep_nesting_through_aliases(tmp_path):
    depth = 60
    lines = ["modelspec: 1", "l0: &l0 " + "[" * depth + "x" + "]" * depth]
    for i in range(1, 40):
        lines.append(f"l{i}: &l{i} " + "[" * depth + f"*l{i - 1}" + "]" * depth)
    error = rejected(write(tmp_path, "\n".join(lines) + "\n"))
    assert "nesting deeper" in messages(error)


@pytest.mark.parametrize("text", ["modelspec: 1\na: &a [*a]\n", "modelspec: 1\na: &a {b: *a}\n"], ids=["seq", "map"])
def test_recursive_alias(text, tmp_path):
    error = rejected(write(tmp_path, text))
    assert "alias" in messages(error)


def test_file_over_one_mib(tmp_path):
    toy = TOY.read_text(encoding="utf-8")
    text = toy + "# " + "x" * MAX_FILE_BYTES + "\n"
    error = rejected(write(tmp_path, text))
    assert f"file larger than {MAX_FILE_BYTES} bytes" in messages(error)


def test_text_over_one_mib_via_load_text():
    with pytest.raises(SpecError) as info:
        load_text("a: b\n" + "#" * MAX_FILE_BYTES, "x.yaml")
    assert "file larger than" in info.value.problems[0].message


def test_nul_byte(tmp_path):
    toy = TOY.read_text(encoding="utf-8").encode()
    data = toy.replace(b"role: worker", b"role: wor\x00ker", 1)
    error = rejected(write(tmp_path, data))
    assert "NUL byte" in messages(error)
    assert error.problems[0].line == toy[: toy.index(b"role: worker")].count(b"\n") + 1


def test_invalid_utf8(tmp_path):
    toy = TOY.read_text(encoding="utf-8").encode()
    data = toy.replace(b"role: worker", b"role: w\xff\xfeorker", 1)
    error = rejected(write(tmp_path, data))
    assert "not valid UTF-8" in messages(error)
    assert error.problems[0].line == toy[: toy.index(b"role: worker")].count(b"\n") + 1


def test_latin1_file_is_not_utf8(tmp_path):
    data = TOY.read_text(encoding="utf-8").replace("Tiny", "Tíny", 1).encode("latin-1")
    assert "not valid UTF-8" in messages(rejected(write(tmp_path, data)))


@pytest.mark.parametrize("style", ["plain", "double-quoted", "block"])
def test_100_kb_scalar(style, tmp_path):
    body = "x" * 100_000
    value = {"plain": body, "double-quoted": f'"{body}"', "block": f"|\n  {body}"}[style]
    text = TOY.read_text(encoding="utf-8").replace(
        "description: Tiny tool-calling worker that runs end to end on a laptop CPU.", f"description: {value}", 1)
    error = rejected(write(tmp_path, text))
    assert f"scalar longer than {MAX_SCALAR_CHARS} characters" in messages(error)


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank", "comment"])
def test_empty_file(content, tmp_path):
    assert "empty document" in messages(rejected(write(tmp_path, content)))


@pytest.mark.parametrize("content", ["~\n", "---\n", "- a\n- b\n", "just a string\n", "42\n"],
                         ids=["null", "bare-document-marker", "list", "string", "int"])
def test_top_level_not_a_mapping(content, tmp_path):
    assert "must be a mapping at the top level" in messages(rejected(write(tmp_path, content)))


@pytest.mark.parametrize("raw", [b"\x07", b"\x1b[31m", b"\xef\xbf\xbe"], ids=["bell", "raw-escape", "U+FFFE"])
def test_raw_control_character(raw, tmp_path):
    data = TOY.read_bytes().replace(b"role: worker", b"role: wor" + raw + b"ker", 1)
    assert messages(rejected(write(tmp_path, data)))


def test_missing_file(tmp_path):
    with pytest.raises(SpecError) as info:
        validate_file(str(tmp_path / "nope.yaml"))
    assert "cannot read spec" in info.value.problems[0].message
