"""The package split: the compiler and its CLI install alone (the PR workflow's light install);
the runtime is the `runtime` extra. The install itself is measured by
bench/bench_light_install.py (a real venv, size and time); here the dependency set is read
from pyproject.toml and the CLI is run with every extra's package made unimportable."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# base distribution -> the top-level modules it provides
BASE = {"pydantic": {"pydantic", "pydantic_core", "typing_extensions"}, "ruamel.yaml": {"ruamel"},
        "jinja2": {"jinja2"}, "networkx": {"networkx"}, "typer": {"typer", "click"}, "rich": {"rich"}}
HEAVY = {"torch", "transformers", "tokenizers", "safetensors", "coremltools", "numpy", "tensorboard", "accelerate", "openai", "aiolimiter",
         "jsonschema", "ray"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_base_dependencies_are_the_compilers():
    assert {_name(r) for r in PYPROJECT["project"]["dependencies"]} == set(BASE)
    extras = PYPROJECT["project"]["optional-dependencies"]
    runtime = {_name(r): r for r in extras["runtime"]}
    assert {"torch", "transformers", "coremltools", "numpy", "tensorboard"} <= set(runtime)
    assert runtime["torch"] == "torch==2.13.0"  # the local CPU wheel; a looser pin pulls CUDA
    assert "modelspec[runtime,ray]" in extras["test"]  # the README's install is still everything


def test_the_exit_path_knows_every_extra():
    """A missing package of an extra is named with its extra (compiler.cli.main.EXTRAS), and the
    runtime commands check the runtime extra's packages (runtime.cli.common.RUNTIME_MODULES)."""
    from compiler.cli.main import EXTRAS
    from runtime.cli.common import RUNTIME_MODULES

    extras = PYPROJECT["project"]["optional-dependencies"]
    declared = {_name(r).replace("-", "_"): extra for extra in ("runtime", "ray") for r in extras[extra]}
    assert declared == EXTRAS
    assert set(RUNTIME_MODULES) <= {m for m, e in EXTRAS.items() if e == "runtime"}


def _third_party_imports(paths) -> dict[str, set[str]]:
    stdlib = sys.stdlib_module_names
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in stdlib and top not in ("compiler", "runtime", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_compiler_and_cli_import_only_base_dependencies():
    """Every import in compiler/ and runtime/cli/, lazy ones included, is the base install's."""
    files = [*(REPO / "compiler").rglob("*.py"), *(REPO / "runtime" / "cli").glob("*.py")]
    provided = set().union(*BASE.values())
    outside = {m: sorted(f) for m, f in _third_party_imports(files).items() if m not in provided}
    assert outside == {}


BLOCKED = """
import json, sys
for m in {heavy!r}:
    sys.modules[m] = None  # `import torch` raises ModuleNotFoundError, find_spec says None
sys.argv = ["modelspec", *{args!r}]
from runtime.cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = None
sys.stderr.write("\\nRESULT " + json.dumps({{"code": code}}) + "\\n")
"""


def _blocked(args, cwd=REPO):
    proc = subprocess.run([sys.executable, "-c", BLOCKED.format(heavy=sorted(HEAVY), args=args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    line = next(line for line in proc.stderr.splitlines() if line.startswith("RESULT "))
    code = json.loads(line.removeprefix("RESULT "))["code"]
    return (0 if code is None else code), proc.stdout, proc.stderr.replace(line, "").rstrip()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    code, _, err = _blocked(["compile", "--out", str(out), "specs/toy.yaml"])
    assert code == 0, err
    return out


@pytest.mark.parametrize("args", [
    ["--help"],
    ["validate", "specs/toy.yaml"],
    ["fmt", "--check", "specs/toy.yaml"],
    ["compile", "--check", "--out", "{out}", "specs/toy.yaml"],
    ["diff", "specs/toy.yaml", "specs/toy.yaml"],
    ["ci", "specs/toy.yaml", "--out", "{out}"],
    ["status", "specs/toy.yaml", "--workdir", "{out}/store"],
], ids=lambda a: a[0].strip("-"))
def test_compiler_commands_run_without_the_runtime(compiled, args):
    code, _, err = _blocked([a.replace("{out}", str(compiled)) for a in args])
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [
    ["run", "specs/toy.yaml"],
    ["run", "specs/toy.yaml", "--dry-run"],
    ["verify", "specs/toy.yaml", "x.mlpackage"],
    ["publish", "specs/toy.yaml", "--to", "releases"],
    ["launch", "specs/toy.yaml", "--job", "train"],
], ids=lambda a: "-".join(a[:1] + [x for x in a if x == "--dry-run"]))
def test_runtime_commands_say_which_extra(args):
    code, _, err = _blocked(args)
    assert code == 2
    assert err.count("\n") == 0 and "pip install 'modelspec[runtime]'" in err and f"modelspec {args[0]}" in err, err


def test_an_extra_imported_deeper_is_one_line_too(monkeypatch, capsys):
    """The single exit path turns any missing extra into its one-line install hint (exit 2)."""
    from compiler.cli import app as cli_app
    from compiler.cli.main import main

    @cli_app.app.command("_needs-ray", hidden=True)
    def _needs_ray() -> None:
        raise ModuleNotFoundError("No module named 'ray'", name="ray")

    monkeypatch.setattr(sys, "argv", ["modelspec", "_needs-ray"])
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        cli_app.app.registered_commands.pop()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip() == "modelspec: this command needs ray, which is not installed: pip install 'modelspec[ray]'"
