"""The `modelspec` command line: exit codes, --json, explain, graph, schema, --set, atomicity, imports.

Most commands run in-process through `compiler.cli_main()` (the console-script entry point);
subprocesses are used only where the process boundary matters (an internal error's exit
status, and which modules a fresh interpreter imported).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli import app as cli_app
from compiler.cli.main import main as cli_main
from compiler.output.build import compile_one
from compiler.output.emit import schema_text
from compiler.output.render import render_files

REPO = Path(__file__).resolve().parents[2]
TOY = "specs/toy.yaml"
GENERATED = REPO / "generated"
TOY_COMPILED = compile_one(str(REPO / TOY), [], str(GENERATED))
TOY_PLAN = TOY_COMPILED.plan()
HEAVY = ("torch", "transformers", "coremltools", "runtime")


@pytest.fixture()
def run(monkeypatch, capsys):
    """run(*args) -> (exit status, stdout, stderr), in the repository root."""
    monkeypatch.chdir(REPO)

    def run_(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["modelspec", *args])
        monkeypatch.setattr(cli_app, "_debug", False)
        with pytest.raises(SystemExit) as exc:
            cli_main()
        out, err = capsys.readouterr()
        code = exc.value.code
        return (0 if code is None else code), out, err

    return run_


@pytest.fixture()
def bad_spec(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    text = (REPO / TOY).read_text(encoding="utf-8")
    assert text.count("n_kv_heads: 2\n") == 1
    path.write_text(text.replace("name: toy-worker", "name: bad-worker").replace("n_kv_heads: 2\n", "n_kv_heads: 3\n"),
                    encoding="utf-8")
    (tmp_path / "data").symlink_to(REPO / "specs" / "data", target_is_directory=True)
    return path


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


# --- exit codes --------------------------------------------------------------------------------


def test_validate_ok_exits_0(run):
    code, out, err = run("validate", TOY)
    assert (code, err) == (0, "")
    assert out == "ok: specs/toy.yaml (toy-worker 1.0.0)\n"


def test_compile_check_up_to_date_exits_0(run):
    code, out, _ = run("compile", "--check", TOY)
    assert code == 0
    assert out == "up to date: toy-worker\n"


def test_compile_check_stale_exits_1(run, tmp_path):
    out = tmp_path / "generated"
    shutil.copytree(GENERATED, out)
    (out / "toy-worker" / "README.md").write_text("edited by hand\n", encoding="utf-8")
    code, stdout, err = run("compile", "--check", "--out", str(out), TOY)
    assert code == 1
    assert str(out / "toy-worker" / "README.md") in err
    assert stdout == ""


def test_invalid_spec_exits_2_with_position_and_hint(run, bad_spec):
    code, out, err = run("validate", str(bad_spec))
    assert code == 2
    assert out == ""
    line = _line_of(bad_spec, "n_kv_heads: 3")
    assert f"{bad_spec}:{line}:15: architecture.n_kv_heads: n_heads 4 is not a multiple of n_kv_heads 3" in err
    assert "hint: n_kv_heads must divide n_heads" in err
    assert err.endswith("1 problem; nothing written.\n")
    assert "nothing written" in err


def test_missing_file_exits_2(run):
    code, _, err = run("validate", "specs/no-such-spec.yaml")
    assert code == 2
    assert "specs/no-such-spec.yaml" in err and "cannot read spec" in err


def test_unknown_graph_format_exits_2(run):
    code, out, err = run("graph", TOY, "--format", "svg")
    assert code == 2
    assert out == ""
    assert "unknown format 'svg'" in err and "--format" in err


def test_unknown_job_exits_2_with_suggestion(run):
    code, _, err = run("explain", TOY, "trian")
    assert code == 2
    assert "no job 'trian'" in err and "did you mean 'train'?" in err


RAISE_IN_VALIDATE = """
import sys
import compiler.reading.validate
def boom(*args, **kwargs):
    raise RuntimeError("simulated internal failure")
compiler.reading.validate.validate_file = boom
sys.argv = ["modelspec", *{args!r}]
from compiler.cli.main import main
main()
"""


def test_internal_error_exits_3_and_says_bug():
    proc = _python(RAISE_IN_VALIDATE.format(args=["validate", TOY]))
    assert proc.returncode == 3, proc.stderr
    assert "bug" in proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError: simulated internal failure" in proc.stderr
    assert proc.stdout == ""


def test_debug_reraises_internal_errors():
    proc = _python(RAISE_IN_VALIDATE.format(args=["--debug", "validate", TOY]))
    assert proc.returncode == 1  # the interpreter's status for an uncaught exception
    assert "RuntimeError: simulated internal failure" in proc.stderr
    assert "this is a bug" not in proc.stderr


# --- --json ------------------------------------------------------------------------------------


def test_validate_json(run, bad_spec):
    code, out, _ = run("validate", "--json", TOY)
    assert code == 0
    assert json.loads(out) == {"ok": True, "valid": [TOY], "problems": []}
    code, out, _ = run("validate", "--json", TOY, str(bad_spec))
    assert code == 2
    result = json.loads(out)
    assert result["ok"] is False and result["valid"] == [TOY]
    assert [(p["file"], p["path"]) for p in result["problems"]] == [(str(bad_spec), "architecture.n_kv_heads")]
    assert set(result["problems"][0]) == {"file", "line", "col", "path", "message", "hint"}


def test_compile_check_json(run):
    code, out, _ = run("compile", "--check", "--json", TOY)
    assert code == 0
    assert json.loads(out) == {"ok": True, "stale": []}


def test_explain_json(run):
    code, out, _ = run("explain", "--json", TOY, "train")
    assert code == 0
    result = json.loads(out)
    assert result["id"] == "train" and result["kind"] == "train"
    assert result["reads"] == ["architecture", "training", "tokenizer.special_tokens", "judge", "halt"]
    assert result["upstream"] == ["dataset", "generate", "teacher", "tokenizer"]
    assert "qat" in result["downstream"] and "publish" in result["downstream"]
    assert result["fingerprint"] == next(j["fingerprint"] for j in TOY_PLAN["jobs"] if j["id"] == "train")
    code, out, _ = run("explain", "--json", TOY)
    assert code == 0
    assert [j["id"] for j in json.loads(out)["jobs"]] == [j["id"] for j in TOY_PLAN["jobs"]]


# --- explain, graph, schema ----------------------------------------------------------------------


def test_explain_job_text(run):
    code, out, _ = run("explain", TOY, "train")
    assert code == 0
    assert out.startswith("train (train)\n")
    assert "reads spec paths: architecture, training, tokenizer.special_tokens" in out
    invalidated = next(line for line in out.splitlines() if "invalidated by:" in line)
    assert "dataset, generate, teacher, tokenizer" in invalidated and "code version" in invalidated
    invalidates = next(line for line in out.splitlines() if "invalidates when it changes:" in line)
    assert "qat" in invalidates and "publish" in invalidates and "tokenizer" not in invalidates


def test_explain_plan_lists_every_job(run):
    code, out, _ = run("explain", TOY)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [j["id"] for j in TOY_PLAN["jobs"]]


def test_graph_dot(run):
    code, out, _ = run("graph", TOY, "--format", "dot")
    assert code == 0
    assert out.startswith("digraph modelspec {") and out.endswith("}\n")
    edges = {(j["id"], n) for j in TOY_PLAN["jobs"] for n in j["needs"]}
    for job_id, need in edges:
        assert f'  "{need}" -> "{job_id}";' in out
    assert out.count(" -> ") == len(edges)


def test_graph_mermaid_is_the_generated_graph(run):
    code, out, _ = run("graph", TOY, "--format", "mermaid")
    assert code == 0
    assert out.splitlines()[1] == "flowchart TD"
    assert out == render_files(TOY_COMPILED)["graph.mmd"]


def test_graph_text_is_the_default(run):
    code, out, _ = run("graph", TOY, "--format", "text")
    assert code == 0
    code, default, _ = run("graph", TOY)
    assert default == out
    rows = out.splitlines()
    assert len(rows) == len(TOY_PLAN["jobs"])
    for row, job in zip(rows, TOY_PLAN["jobs"]):
        assert row.split()[:3] == [job["id"], job["kind"], job["fingerprint"][:12]]


def test_schema_prints_json_schema(run):
    code, out, _ = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "architecture" in schema["properties"]
    assert out == schema_text()


# --- --set ---------------------------------------------------------------------------------------


def test_set_changes_train_fingerprint_and_is_recorded(run, tmp_path):
    out = tmp_path / "out"
    code, _, err = run("compile", "--out", str(out), "--set", "training.optimizer.lr=1e-3", TOY)
    assert code == 0, err
    plan = json.loads((out / "toy-worker" / "plan.json").read_text(encoding="utf-8"))
    assert plan["overrides"] == ["training.optimizer.lr=1e-3"]
    new = {j["id"]: j for j in plan["jobs"]}
    old = {j["id"]: j for j in TOY_PLAN["jobs"]}
    assert new["train"]["params"]["training"]["optimizer"]["lr"] == 0.001
    assert new["train"]["fingerprint"] != old["train"]["fingerprint"]
    assert new["tokenizer"]["fingerprint"] == old["tokenizer"]["fingerprint"]
    assert new["teacher"]["fingerprint"] == old["teacher"]["fingerprint"]
    assert plan["spec"]["hash"] != TOY_PLAN["spec"]["hash"]
    assert TOY_PLAN["overrides"] == []


def test_set_applies_to_graph_and_explain(run):
    code, out, _ = run("explain", "--json", "--set", "training.optimizer.lr=1e-3", TOY, "train")
    assert code == 0
    assert json.loads(out)["params"]["training"]["optimizer"]["lr"] == 0.001


@pytest.mark.parametrize("override, named", [
    ("training.optimizer.lrr=1e-3", "training.optimizer.lrr"),
    ("training.nope.lr=1e-3", "training.nope"),
    ("shapes.prefill[7]=64", "shapes.prefill[7]"),
])
def test_set_unknown_path_exits_2_naming_it(run, override, named):
    code, out, err = run("validate", "--set", override, TOY)
    assert code == 2
    assert out == ""
    assert f"'{named}' does not exist in the spec" in err


def test_set_suggests_the_key(run):
    code, _, err = run("validate", "--set", "training.optimizer.lrr=1e-3", TOY)
    assert code == 2
    assert "did you mean 'lr'?" in err


def test_set_without_value_exits_2(run):
    code, _, err = run("validate", "--set", "training.optimizer.lr", TOY)
    assert code == 2
    assert "not path=value" in err


def test_set_value_is_validated_like_the_file(run):
    code, _, err = run("validate", "--set", "training.optimizer.lr=fast", TOY)
    assert code == 2
    assert "training.optimizer.lr" in err and "--set" in err


# --- atomicity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [False, True], ids=["absent", "empty"])
def test_compile_with_one_invalid_spec_writes_nothing(run, tmp_path, bad_spec, exists):
    out = tmp_path / "out"
    if exists:
        out.mkdir()
    code, stdout, err = run("compile", "--out", str(out), TOY, str(bad_spec))
    assert code == 2
    assert "nothing written" in err and "architecture.n_kv_heads" in err
    assert not stdout.startswith("compiled")
    if exists:
        assert list(out.iterdir()) == []
    else:
        assert not out.exists()


# --- heavy imports ---------------------------------------------------------------------------------

IMPORTS = """
import json, sys
sys.argv = ["modelspec", *{args!r}]
from compiler.cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
sys.stderr.write("\\nRESULT " + json.dumps({{"code": code, "heavy": heavy}}) + "\\n")
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["validate", TOY],
    ["compile", "--check", TOY],
    ["explain", TOY, "train"],
], ids=["help", "validate", "compile-check", "explain"])
def test_cli_does_not_import_heavy_libraries(args):
    proc = _python(IMPORTS.format(args=args, heavy=HEAVY))
    line = next(line for line in proc.stderr.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["code"] in (0, None), proc.stderr
    assert result["heavy"] == [], f"modelspec {' '.join(args)} imported {result['heavy']}"
    if args == ["--help"]:
        assert "validate" in proc.stdout and "compile" in proc.stdout
