"""`modelspec ci`: the workflow and pre-commit config parse, run the right commands, quote paths."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path


from compiler.authoring.ci_templates import FOLDER, PRE_COMMIT, WORKFLOW, render_ci

REPO = Path(__file__).resolve().parents[2]
SPECS = [f"specs/{p.name}" for p in sorted((REPO / "specs").glob("*.yaml"))]


def load(text: str):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def uninert(text: str) -> str:
    return text.replace("${{ '${{' }}", "${{")




def steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["modelspec"]["steps"]


def test_workflow_structure():
    wf = load(render_ci(SPECS)[WORKFLOW])
    assert wf["on"] == {"pull_request": None}
    assert wf["permissions"] == {"contents": "read", "pull-requests": "write"}
    runs = [s.get("run", "") for s in steps(wf)]
    quoted = " ".join(shlex.quote(p) for p in SPECS)
    assert f"modelspec validate {quoted}" in runs
    assert f"modelspec fmt --check {quoted}" in runs
    assert f"modelspec compile --check {quoted}" in runs
    diff = next(s for s in steps(wf) if "modelspec diff" in s.get("run", ""))
    assert diff["run"].startswith('modelspec diff --base "origin/$BASE_REF" --format markdown ')
    assert diff["run"].endswith("> modelspec-diff.md")
    assert diff["env"] == {"BASE_REF": "${{ github.base_ref }}"}
    comment = steps(wf)[-1]
    assert comment["uses"].startswith("marocchino/sticky-pull-request-comment@")
    assert comment["with"]["path"] == "modelspec-diff.md"
    assert "hashFiles('modelspec-diff.md') != ''" in comment["if"] and "!cancelled()" in comment["if"]
    assert steps(wf)[0]["uses"].startswith("actions/checkout@") and steps(wf)[0]["with"]["fetch-depth"] == 0
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
    assert "49" not in files[WORKFLOW] and "${{ secrets" not in files[WORKFLOW].replace("${{ '${{' }}", "")
    for s in steps(wf):
        if s.get("run", "").startswith("modelspec validate"):
            assert shlex.split(uninert(s["run"]))[2:] == paths
        assert "secrets.GITHUB_TOKEN }}" not in uninert(s.get("run", "")).replace("${{ secrets.GITHUB_TOKEN }}.yaml", "")
    hook = pc["repos"][0]["hooks"][0]
    assert [uninert(a) for a in hook["args"]] == paths
    assert all(re.compile(uninert(hook["files"])).search(p) for p in paths)


def test_expressions_in_paths_are_neutralised():
    wf = render_ci(["specs/${{ github.token }}.yaml"])[WORKFLOW]
    run = next(s["run"] for s in steps(load(wf)) if s.get("run", "").startswith("modelspec validate"))
    assert "${{ github.token }}" not in run.replace("${{ '${{' }}", "@")
    assert uninert(run) == "modelspec validate 'specs/${{ github.token }}.yaml'"


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
