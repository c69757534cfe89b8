"""`modelspec new`: scaffolds validate, land near the size, carry derived comments, write safely."""

from __future__ import annotations

import functools

from pathlib import Path

import pytest

from compiler.output.build import compile_one
from compiler.analysis.derived import derive
from compiler.core.errors import SpecError
from compiler.authoring.fmt import format_text
from compiler.reading.loader import load_text
from compiler.authoring.scaffold import SHAPES, TOLERANCE, parse_size, scaffold, size_architecture
from compiler.reading.validate import validate_doc, validate_file

REPO = Path(__file__).resolve().parents[2]


def validated(text: str):
    return validate_doc(load_text(text, "new.yaml"), str(REPO))


@pytest.fixture()
def run(run, tmp_path):  # noqa: F811  (the shared runner, in a scratch folder)
    return functools.partial(run, cwd=tmp_path)


@pytest.mark.parametrize("role", ["worker", "judge", "drafter"])
@pytest.mark.parametrize("size", ["0.1b", "0.5b", "1.5b", "4b", "9b", "30b"])
def test_scaffold_validates_and_lands_near_size(role, size):
    text = scaffold(role, size)
    spec = validated(text)
    assert spec.role == role
    target = parse_size(size)
    params = derive(spec).params
    assert abs(params - target) / target <= TOLERANCE
    assert f"{params:,} parameters" in text
    assert "KV cache" in text and "FLOPs" in text and "needs " in text
    assert format_text(text, "new.yaml", str(REPO)) == text  # fmt-clean
    assert spec.name == f"{role}-{size.replace('0.1b', '100m').replace('0.5b', '500m').replace('1.5b', '1500m')}"


@pytest.mark.parametrize("size", ["50m", "125m", "0.3b", "0.7b", "1b", "2b", "3b", "7b", "13b", "70b", "400b", "4000000000", "4e9"])
def test_sizing_rule_within_tolerance(size):
    sized = size_architecture(parse_size(size))
    assert abs(sized.error) <= TOLERANCE
    d, h, kv, dh, _ = sized.row
    assert d == h * dh and h % kv == 0


def test_sizing_reproduces_the_shipped_shapes():
    for size, spec in (("9b", "worker-9b"), ("4b", "judge-4b")):
        arch = validate_file(str(REPO / "specs" / f"{spec}.yaml")).spec.architecture
        sized = size_architecture(parse_size(size))
        assert sized.row == (arch.d_model, arch.n_heads, arch.n_kv_heads, arch.d_head, arch.mlp.hidden)
        assert sized.n_layers == arch.n_layers


def test_table_rows_are_consistent():
    assert [r[0] for r in SHAPES] == sorted(r[0] for r in SHAPES)


@pytest.mark.parametrize("text, n", [("0.5b", 500_000_000), ("4B", 4_000_000_000), ("125m", 125_000_000),
                                     ("9000000000", 9_000_000_000), ("4e9", 4_000_000_000), (" 1.5b ", 1_500_000_000)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "four", "4x", "-1b", "0", "2t", "nan", "inf", "1b; rm -rf /"])
def test_parse_size_rejects(text):
    with pytest.raises(SpecError) as info:
        parse_size(text)
    assert info.value.problems[0].path == "--size"


def test_too_small_is_refused():
    with pytest.raises(SpecError, match="cannot size"):
        scaffold("worker", "5m")


@pytest.mark.parametrize("name", ["Bad", "../etc", "a b", "-x", "x" * 65, "a/b", "{{ x }}"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(SpecError) as info:
        scaffold("worker", "1b", name)
    assert info.value.problems[0].path == "--name"


def test_cli_prints_writes_and_refuses_to_overwrite(run, tmp_path):
    code, out, _ = run("new", "--role", "drafter", "--size", "1b")
    assert code == 0 and validated(out).name == "drafter-1b"

    target = tmp_path / "specs" / "mine.yaml"
    target.parent.mkdir()
    code, out, err = run("new", "--role", "judge", "--size", "0.5b", "--name", "my-judge", "--out", "specs/mine.yaml")
    assert code == 0 and out == "" and "wrote specs/mine.yaml" in err
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=../generated/modelspec.schema.json\n")
    compiled = compile_one(str(target), [], str(tmp_path / "generated"))
    assert compiled.spec.name == "my-judge" and compiled.spec.shapes.decode.enabled is False

    code, _, err = run("new", "--role", "worker", "--size", "1b", "--out", "specs/mine.yaml")
    assert code == 2 and "--force" in err
    assert target.read_text(encoding="utf-8") == text
    code, _, _ = run("new", "--role", "worker", "--size", "1b", "--out", "specs/mine.yaml", "--force")
    assert code == 0 and validated(target.read_text(encoding="utf-8")).role == "worker"


@pytest.mark.parametrize("args", [["--role", "critic", "--size", "1b"], ["--role", "worker", "--size", "huge"],
                                  ["--role", "worker", "--size", "1b", "--name", "Not_Safe"],
                                  ["--role", "worker", "--size", "1b", "--out", "missing/x.yaml"]])
def test_cli_bad_arguments_exit_2(run, tmp_path, args):
    code, out, err = run("new", *args)
    assert code == 2 and "<command line>" in err
    assert list(tmp_path.iterdir()) == []
