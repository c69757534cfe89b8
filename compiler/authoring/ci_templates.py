"""`modelspec ci`: a GitHub Actions workflow and a pre-commit configuration for a set of specs.

Rendered from `templates/github-workflow.yml.j2` and `templates/pre-commit-config.yaml.j2` into
`OUT/_ci/` (a folder no spec can own: spec names start with a letter or digit) through
`emit.write_folder`, so a failed render writes nothing; `--check` compares instead.

Spec paths reach the files only as data, never as template source: each value is quoted here
and the template inserts the finished scalar. Shell commands quote every path with
`shlex.quote` and split any `${{` inside the quotes (`shell_word`), so `run:` holds no
expression at all; elsewhere an opener `${{` is neutralised as an expression that yields it;
the result is written as a JSON string, which is a valid YAML double-quoted scalar. pre-commit
gets the paths as `args` (no shell) and a `files` regex built with `re.escape`.

The workflow is built to pass zizmor (tests/compiler/test_ci_templates.py runs it offline):
every action is pinned to a full commit SHA with its version in a comment (`ACTIONS`), the
checkout does not persist credentials, the workflow grants nothing and each job what it needs.
The job that runs the pull request's code (install, validate, fmt, compile, diff) reads
contents only; the diff report travels as an artifact to a second job, which runs no code
from the pull request and alone may write the comment.
"""

from __future__ import annotations

import json
import os
import re
import shlex

from compiler.core.errors import Problem, SpecError

FOLDER = "_ci"
WORKFLOW = "github-workflow.yml"
PRE_COMMIT = "pre-commit-config.yaml"
DIFF_FILE = "modelspec-diff.md"
# The light install: the compiler and its CLI without the runtime extra (pyproject.toml);
# bench/bench_light_install.py measures it.
DEFAULT_INSTALL = "python -m pip install -e ."
# The Python versions pyproject.toml's requires-python allows (a test ties them together).
SUPPORTED_PYTHON = ("3.11",)
DEFAULT_PYTHON = SUPPORTED_PYTHON[0]
REQUIRES_PYTHON = ">=3.11,<3.12"
# Actions by full commit SHA (a tag can be moved; a SHA cannot), the release in a comment.
# Each SHA is the commit its release tag points to in the action's repository (checked when
# pinned; docs/authoring.md says how to update them).
ACTIONS = {
    "checkout": ("actions/checkout", "11d5960a326750d5838078e36cf38b85af677262", "v4.4.0"),
    "setup_python": ("actions/setup-python", "a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"),
    "upload_artifact": ("actions/upload-artifact", "ea165f8d65b6e75b540449e92b4886f43607fa02", "v4.6.2"),
    "download_artifact": ("actions/download-artifact", "d3f86a106a0bac45b974a628896c90dbdf5c8093", "v4.3.0"),
    "sticky_comment": ("marocchino/sticky-pull-request-comment", "773744901bac0e8cbb5a0dc842800d45e9b2b405", "v2.9.4"),
}
_BAD = re.compile(r"[\x00-\x1f\x7f]")


def inert(text: str) -> str:
    """A string GitHub Actions will not evaluate: `${{` becomes an expression that yields `${{`."""
    return text.replace("${{", "${{ '${{' }}")


def shell_word(text: str) -> str:
    """`text` as one shell word with no `${{` in it, so GitHub finds no expression to evaluate.

    shlex.quote single-quotes any text containing `$` or `{`; each `${{` inside those quotes is
    split as `$'"{{"'` (close the quotes after `$`, `{{` double-quoted, reopen): the shell joins
    the pieces back into the same word, and no expression, not even a constant, lands in `run:`.
    """
    return shlex.quote(text).replace("${{", "$'\"{{\"'")


def yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are YAML), inert for GitHub expressions."""
    return json.dumps(inert(text), ensure_ascii=True)


def spec_paths(paths: list[str]) -> list[str]:
    """Relative, forward-slash paths inside the current folder, or SpecError."""
    problems = []
    out = []
    cwd = os.path.realpath(os.getcwd())
    for p in paths:
        full = os.path.realpath(p)
        rel = os.path.relpath(full, cwd).replace(os.sep, "/")
        if _BAD.search(p):
            problems.append(Problem("<command line>", 1, 1, "SPECS", f"spec path {p!r} contains control characters",
                                    "rename the file"))
        elif os.path.commonpath([cwd, full]) != cwd or rel.startswith("../"):
            problems.append(Problem("<command line>", 1, 1, "SPECS", f"spec path {p!r} is outside the current folder",
                                    "run modelspec ci from the repository root; CI checks out the repository there"))
        else:
            out.append(rel)
    if problems:
        raise SpecError(problems)
    return out


def python_version(version: str) -> str:
    """`version` when pyproject.toml's requires-python allows it (3.11 or 3.11.N), else SpecError."""
    if any(re.fullmatch(re.escape(v) + r"(\.[0-9]+)?", version) for v in SUPPORTED_PYTHON):
        return version
    raise SpecError([Problem("<command line>", 1, 1, "--python",
                             f"Python {version!r} is not supported: modelspec requires Python {REQUIRES_PYTHON}",
                             f"use {' or '.join(SUPPORTED_PYTHON)} (or a patch release of it), or leave --python out")])


def render_ci(paths: list[str], install: str = DEFAULT_INSTALL, python: str = DEFAULT_PYTHON) -> dict[str, str]:
    """{file name: text}; `paths` are already-validated relative spec paths."""
    from compiler.output.text import environment

    quoted = " ".join(shell_word(p) for p in paths)
    files_regex = "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"
    context = {
        "count": len(paths),
        "python_q": yaml_str(python),
        "install_q": yaml_str(install),
        "validate_q": yaml_str(f"modelspec validate {quoted}"),
        "fmt_q": yaml_str(f"modelspec fmt --check {quoted}"),
        "compile_q": yaml_str(f"modelspec compile --check {quoted}"),
        "diff_q": yaml_str(f'modelspec diff --base "origin/$BASE_REF" --format markdown {quoted} > {DIFF_FILE}'),
        "diff_file_q": yaml_str(DIFF_FILE),
        "files_q": yaml_str(files_regex),
        "args_q": ", ".join(yaml_str(p) for p in paths),
    }
    context |= {f"uses_{key}": f"{repo}@{sha} # {tag}" for key, (repo, sha, tag) in ACTIONS.items()}
    context |= {  # GitHub expressions: constants of this module, never user data
        "group": "modelspec-${{ github.event.pull_request.number }}",
        "if_not_cancelled": "${{ !cancelled() }}",
        "base_ref": "${{ github.base_ref }}",
        # posted whenever the report was written: diff exits 1 on an unversioned breaking change,
        # which is exactly when reviewers need the comment
        "if_report": "${{ !cancelled() && hashFiles('modelspec-diff.md') != '' }}",
        "report_output": "${{ steps.upload.outputs.artifact-id }}",
        "if_comment": ("${{ !cancelled() && needs.check.outputs.report != '' && "
                       "github.event.pull_request.head.repo.full_name == github.repository }}"),
    }
    env = environment()
    return {
        WORKFLOW: env.get_template("github-workflow.yml.j2").render(context),
        PRE_COMMIT: env.get_template("pre-commit-config.yaml.j2").render(context),
    }


def ci_files(specs: list[str], install: str = DEFAULT_INSTALL, python: str = DEFAULT_PYTHON) -> dict[str, str]:
    """Check the Python version and validate the specs (every problem at once), then render."""
    from compiler.reading.validate import validate_file

    problems = []
    try:
        python_version(python)
    except SpecError as exc:
        problems.extend(exc.problems)
    paths = spec_paths(specs)
    for p in specs:
        try:
            validate_file(p)
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return render_ci(paths, install, python)
