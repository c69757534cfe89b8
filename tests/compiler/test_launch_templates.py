"""compiler/output/launch.py: the Slurm script and the Kubernetes Job of every training job launch the
same torchrun command with the spec's resources; hostile strings stay data.

The sbatch scripts are checked with `bash -n` and then run for real with stub `scontrol` and
`srun` on PATH: the argv srun receives is the command after the shell's expansion and quoting.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from compiler.output.build import build_outputs, compile_one
from compiler.core.errors import SpecError
from compiler.output.launch import K8S_NAME_MAX, k8s_name, launch_files

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
NODELIST = ["gpu-017", "gpu-018", "gpu-019"]
SLURM_JOB_ID = "424242"


def _resources(spec: Path) -> dict:
    """training.resources as written in the spec file (read independently of the compiler)."""
    res = YAML(typ="safe", pure=True).load(spec.read_text(encoding="utf-8"))["training"]["resources"]
    return {"device": res["device"], "nproc": res["nproc"], "nodes": res.get("nodes", 1), "strategy": res.get("strategy", "ddp")}


def _expected_argv(spec_path: str, job: str, nodes: int, nproc: int, host: str, rdzv_id: str, store: str) -> list[str]:
    return ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{host}:29500", "--rdzv-id", rdzv_id, "-m", "runtime.cli", "launch", spec_path,
            "--job", job, "--workdir", store]


def _directives(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def _srun_words(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if line.startswith("srun ")]
    return shlex.split(line)


def _run_sbatch(script: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the script with stub scontrol/srun; returns the argv srun got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "%s\\n" ' + " ".join(NODELIST) + "\n")
    (bin_dir / "srun").write_text("#!/bin/sh\n" + f'exec "{sys.executable}" -c "import json, sys; '
                                  "open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))\" "
                                  f'"{tmp_path}/argv.json" "$@"\n')
    for stub in ("scontrol", "srun"):
        (bin_dir / stub).chmod(0o755)
    path = tmp_path / "job.sbatch"
    path.write_text(script, encoding="utf-8")
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "gpu-[017-019]", "SLURM_JOB_ID": SLURM_JOB_ID,
            "SLURM_CPUS_PER_TASK": "8"}
    proc = subprocess.run(["bash", str(path)], cwd=tmp_path, env=base | (env or {}), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "argv.json").read_text())


def _k8s(text: str) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["Service", "Job"]
    return docs[0], docs[1]


def _unk8s(arg: str) -> str:
    """A Kubernetes command entry in the script's spelling: `$(X)` -> `${X}`, `$$` -> `$`."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "${%s}" % m.group(1) if m.group(1) else "$", arg)


def _launched(spec: Path) -> tuple:
    c = compile_one(str(spec), [], str(REPO / "generated"))
    jobs = ["train", "qat"] if c.spec.training.qat.enabled else ["train"]
    if c.spec.teacher is not None and c.spec.teacher.kind == "train":
        jobs = ["teacher"] + jobs
    return c, jobs


# --- every shipped spec ------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_training_job_gets_both_launch_files(spec: Path):
    c, jobs = _launched(spec)
    files = launch_files(c)
    assert sorted(files) == sorted(f"launch/{j}.{ext}" for j in jobs for ext in ("sbatch", "k8s.yaml"))
    assert set(files) <= set(build_outputs([str(spec)], [], str(REPO / "generated"))[c.spec.name])


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_sbatch_parses_and_launches_torchrun_with_the_spec_resources(spec: Path, tmp_path: Path):
    c, jobs = _launched(spec)
    res = _resources(spec)
    for job in jobs:
        script = launch_files(c)[f"launch/{job}.sbatch"]
        check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        assert script.startswith("#!/bin/bash\n")
        want = [f"--job-name={c.spec.name}-{job}", f"--nodes={res['nodes']}", "--ntasks-per-node=1"]
        want += [f"--gpus-per-node={res['nproc']}"] if res["device"] == "cuda" else []
        want += [f"--cpus-per-task={res['nproc']}", "--requeue", "--open-mode=append", "--output=%x-%j.out"]
        assert _directives(script) == want
        words = _srun_words(script)
        assert words[:2] == ["srun", "--kill-on-bad-exit=1"]
        assert words[2:] == _expected_argv(f"specs/{spec.name}", job, res["nodes"], res["nproc"],
                                           "${MODELSPEC_RDZV_HOST}", "${MODELSPEC_RDZV_ID}", "${MODELSPEC_STORE}")
        # run it: the rendezvous host is the allocation's first node, the id the Slurm job id
        argv = _run_sbatch(script, tmp_path)
        assert argv[1:] == _expected_argv(f"specs/{spec.name}", job, res["nodes"], res["nproc"], NODELIST[0],
                                          SLURM_JOB_ID, ".modelspec")
        argv = _run_sbatch(script, tmp_path, {"MODELSPEC_STORE": "/shared/store"})
        assert argv[-1] == "/shared/store"


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_k8s_indexed_job_runs_the_same_command(spec: Path):
    c, jobs = _launched(spec)
    res = _resources(spec)
    for job in jobs:
        files = launch_files(c)
        service, k8s_job = _k8s(files[f"launch/{job}.k8s.yaml"])
        name = k8s_job["metadata"]["name"]
        assert k8s_job["apiVersion"] == "batch/v1"
        s = k8s_job["spec"]
        assert s["completionMode"] == "Indexed"
        assert s["completions"] == s["parallelism"] == res["nodes"]
        pod = s["template"]["spec"]
        (container,) = pod["containers"]
        # the same argv as the Slurm script's torchrun, variable for variable
        assert [_unk8s(a) for a in container["command"]] == _srun_words(files[f"launch/{job}.sbatch"])[2:]
        assert "args" not in container
        env = {e["name"]: e for e in container["env"]}
        assert env["MODELSPEC_RDZV_HOST"]["value"] == f"{name}-0.{service['metadata']['name']}"
        assert pod["subdomain"] == service["metadata"]["name"]
        assert env["MODELSPEC_RDZV_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.labels['batch.kubernetes.io/controller-uid']"
        # rendezvous: a headless service selecting exactly these pods
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"][0]["port"] == 29500
        labels = s["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        # resources
        amounts = {"cpu": str(res["nproc"])} | ({"nvidia.com/gpu": str(res["nproc"])} if res["device"] == "cuda" else {})
        assert container["resources"] == {"requests": amounts, "limits": amounts}
        # the store: the claim (a marked parameter) mounted where MODELSPEC_STORE points
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "${MODELSPEC_STORE_CLAIM}"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["store"] == env["MODELSPEC_STORE"]["value"] == "/store"
        assert container["image"] == "${MODELSPEC_IMAGE}"
        assert pod["restartPolicy"] == "OnFailure" and s["backoffLimit"] >= res["nodes"]


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext) not installed")
def test_envsubst_fills_image_and_claim_and_nothing_else():
    c, _ = _launched(REPO / "specs" / "worker-9b.yaml")
    text = launch_files(c)["launch/train.k8s.yaml"]
    header = next(line for line in text.splitlines() if line.startswith("# Apply: "))
    assert "envsubst '$MODELSPEC_IMAGE $MODELSPEC_STORE_CLAIM' < train.k8s.yaml | kubectl apply -f -" in header
    env = {"PATH": os.environ["PATH"], "MODELSPEC_IMAGE": "registry.example/modelspec:1.0", "MODELSPEC_STORE_CLAIM": "ms-store",
           "MODELSPEC_STORE": "/elsewhere", "MODELSPEC_RDZV_HOST": "nope"}
    filled = subprocess.run(["envsubst", "$MODELSPEC_IMAGE $MODELSPEC_STORE_CLAIM"], input=text, env=env, capture_output=True,
                            text=True, check=True).stdout
    _, before = _k8s(text)
    _, after = _k8s(filled)
    pod = after["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/modelspec:1.0"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ms-store"
    assert pod["containers"][0]["command"] == before["spec"]["template"]["spec"]["containers"][0]["command"]


def test_worker_9b_is_two_fsdp2_nodes_of_eight_gpus():
    c, jobs = _launched(REPO / "specs" / "worker-9b.yaml")
    assert jobs == ["train", "qat"]
    script = launch_files(c)["launch/train.sbatch"]
    assert "--nodes=2" in _directives(script) and "--gpus-per-node=8" in _directives(script)
    _, job = _k8s(launch_files(c)["launch/train.k8s.yaml"])
    assert job["spec"]["completions"] == 2
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


# --- names -------------------------------------------------------------------------------------

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("spec_name", ["worker-9b", "9b-worker", "a" * 64, "x-" * 31 + "y", "a-"])
@pytest.mark.parametrize("nodes", [1, 2, 128])
def test_k8s_names_are_dns_labels_with_room_for_the_pod_index(spec_name: str, nodes: int):
    name = k8s_name(spec_name, "teacher", nodes)
    assert DNS_1035.match(name), name
    assert len(f"{name}-{nodes - 1}") <= K8S_NAME_MAX
    assert k8s_name(spec_name, "teacher", nodes) == name  # stable
    assert k8s_name(spec_name, "qat", nodes) != name


# --- hostile strings ---------------------------------------------------------------------------

HOSTILE_DESCRIPTION = "{{ 7*7 }} {% for x in range(3) %}X{% endfor %} $(touch /tmp/pwned-launch) `id` ; rm -rf / && echo \\\"q\\\""
HOSTILE_FILES = ["it's a \"spec\" `id`; touch pwned.yaml", "{{ 7 * 7 }} {% raw %}.yaml", "- [x]: #y.yaml", "ünï cödé.yaml",
                 "new\nline.yaml", "--job qat.yaml"]


def _hostile_spec(folder: Path, file_name: str) -> Path:
    text = (REPO / "specs" / "toy.yaml").read_text(encoding="utf-8")
    old = "description: Tiny tool-calling worker that runs end to end on a laptop CPU."
    assert old in text
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "specs" / "data", folder / "data", dirs_exist_ok=True)
    path = folder / file_name
    path.write_text(text.replace(old, f'description: "{HOSTILE_DESCRIPTION}"')
                    .replace("resources: {device: cpu, nproc: 1}", "resources: {device: cuda, nproc: 4, nodes: 3}"), encoding="utf-8")
    return path


@pytest.mark.parametrize("file_name", HOSTILE_FILES)
def test_hostile_spec_paths_and_descriptions_stay_data(tmp_path: Path, file_name: str):
    spec = _hostile_spec(tmp_path / "specs", file_name)
    files = build_outputs([str(spec)], [], str(tmp_path / "generated"))["toy-worker"]
    spec_path = f"specs/{file_name}"
    for job in ("teacher", "train", "qat"):
        script = files[f"launch/{job}.sbatch"]
        assert "49" not in script and "7*7" not in script and "pwned-launch" not in script  # the description never lands here
        assert subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True).returncode == 0
        (tmp_path / job).mkdir()
        argv = _run_sbatch(script, tmp_path / job)
        assert argv[1:] == _expected_argv(spec_path, job, 3, 4, NODELIST[0], SLURM_JOB_ID, ".modelspec")
        assert not (tmp_path / job / "pwned").exists()
        head = script.split("\nset -euo pipefail\n")[0].splitlines()  # nothing of the path escapes a comment
        assert all(line.startswith("#") for line in head), head
        _, k8s_job = _k8s(files[f"launch/{job}.k8s.yaml"])
        command = k8s_job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("launch") + 1] == spec_path
        assert command[command.index("--job") + 1] == job
    assert not Path("/tmp/pwned-launch").exists()


def test_dollar_in_the_spec_path_is_refused_with_nothing_written(tmp_path: Path):
    spec = _hostile_spec(tmp_path / "specs", "$(id)$MODELSPEC_IMAGE.yaml")
    with pytest.raises(SpecError) as info:
        build_outputs([str(spec)], [], str(tmp_path / "generated"))
    (problem,) = info.value.problems
    assert "contains '$'" in problem.message and problem.hint == "rename the spec file"
    assert not (tmp_path / "generated").exists()


def test_readme_lists_the_launch_files_and_the_fit(tmp_path: Path):
    outputs = build_outputs([str(REPO / "specs" / "worker-9b.yaml")], [], str(REPO / "generated"))["worker-9b"]
    readme = outputs["README.md"]
    assert "[launch/train.sbatch](launch/train.sbatch) (Slurm), [launch/train.k8s.yaml](launch/train.k8s.yaml) (Kubernetes)" in readme
    assert ("| job | seq_len | model state | activations | attention scores | logits | bf16 weight copies | transient | total "
            "| fits 80 GiB |") in readme
    # bf16, sdpa, per-layer recomputation and the chunked loss: worker-9b fits 16 x 80 GB at every curriculum length
    assert "| train | 16384 | 9.41 GiB | 9.64 GiB | 0 B | 0 B | 0 B | 3.56 GiB | 22.61 GiB | yes |" in readme
    assert "- placement: 2 node(s) x 8 process(es) = 16 rank(s), cuda, fsdp2" in readme


def test_compile_prints_fit_warnings(run, tmp_path: Path):
    code, out, err = run("compile", "--out", str(tmp_path / "out"), "specs/worker-9b.yaml")
    assert code == 0, err
    assert (tmp_path / "out" / "worker-9b" / "launch" / "train.sbatch").is_file()
    assert not [line for line in err.splitlines() if line.startswith("warning: worker-9b: ")]  # it fits as shipped
    keep = ["--set", "training.compute.activation_checkpointing=false"]
    code, out, err = run("compile", *keep, "--out", str(tmp_path / "out"), "specs/worker-9b.yaml")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: worker-9b: ")]
    assert [w.split()[2] for w in warnings] == ["train", "qat"]
    assert warnings[0].endswith("set training.compute.activation_checkpointing: true (docs/scale.md)")
    code, out, _ = run("compile", *keep, "--json", "--out", str(tmp_path / "out"), "specs/worker-9b.yaml")
    assert [w.split()[1] for w in json.loads(out)["warnings"]] == ["train", "qat"]


def test_explain_names_the_launch_files(run):
    code, out, _ = run("explain", "specs/worker-9b.yaml", "train")
    assert code == 0
    assert "  placement: 2 node(s) x 8 process(es), cuda, fsdp2 (not fingerprinted)" in out
    assert "  launch: generated/worker-9b/launch/train.sbatch (Slurm), generated/worker-9b/launch/train.k8s.yaml (Kubernetes)" in out
    code, out, _ = run("explain", "specs/worker-9b.yaml", "eval")
    assert "launch:" not in out


# --- where the spec path points, for --out inside and outside the repository -----------------------

def _launch_spec_paths(out: Path, name: str = "toy-worker") -> set[str]:
    """The spec path every launch file of `out/<name>/` names (sbatch and Kubernetes) and plan.json's."""
    found = {json.loads((out / name / "plan.json").read_text(encoding="utf-8"))["spec"]["path"]}
    for script in (out / name / "launch").glob("*.sbatch"):
        words = _srun_words(script.read_text(encoding="utf-8"))
        found.add(words[words.index("launch") + 1])
    for manifest in (out / name / "launch").glob("*.k8s.yaml"):
        command = _k8s(manifest.read_text(encoding="utf-8"))[1]["spec"]["template"]["spec"]["containers"][0]["command"]
        found.add(command[command.index("launch") + 1])
    return found


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A git repository holding a spec with multi-node training jobs (so it has launch files)."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    _hostile_spec(root / "specs", "toy.yaml")
    return root


@pytest.mark.parametrize("out", ["generated", "sub/deeper/gen"])
def test_out_inside_the_repository_names_the_spec_from_its_root(run, repo: Path, out: str):
    code, _, err = run("compile", "--out", out, "specs/toy.yaml", cwd=repo)
    assert code == 0, err
    assert _launch_spec_paths(repo / out) == {"specs/toy.yaml"}  # launch from the repository root
    assert (repo / "specs" / "toy.yaml").is_file()
    # from a subfolder, through a relative --out and spec path: the same files
    (repo / "sub").mkdir(exist_ok=True)
    code, _, err = run("compile", "--out", "../gen2", "../specs/toy.yaml", cwd=repo / "sub")
    assert code == 0, err
    assert _launch_spec_paths(repo / "gen2") == {"specs/toy.yaml"}


def test_out_outside_the_repository_names_the_spec_absolutely(run, repo: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere" / "gen"
    code, _, err = run("compile", "--out", str(outside), "specs/toy.yaml", cwd=repo)
    assert code == 0, err
    (path,) = _launch_spec_paths(outside)
    assert path == str(repo / "specs" / "toy.yaml") and Path(path).is_file()  # found from any folder
    argv = _run_sbatch((outside / "toy-worker" / "launch" / "train.sbatch").read_text(encoding="utf-8"), tmp_path / "elsewhere")
    assert argv[1:] == _expected_argv(path, "train", 3, 4, NODELIST[0], SLURM_JOB_ID, ".modelspec")


def test_out_in_another_repository_names_the_spec_absolutely(run, repo: Path, tmp_path: Path):
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    code, _, err = run("compile", "--out", str(other / "gen"), "specs/toy.yaml", cwd=repo)
    assert code == 0, err
    assert _launch_spec_paths(other / "gen") == {str(repo / "specs" / "toy.yaml")}


def test_out_without_a_repository_names_the_spec_from_outs_parent(run, tmp_path: Path):
    """An unpacked tree without .git: relative to OUT's parent when the spec is under it."""
    _hostile_spec(tmp_path / "tree" / "specs", "toy.yaml")
    code, _, err = run("compile", "--out", "gen", "specs/toy.yaml", cwd=tmp_path / "tree")
    assert code == 0, err
    assert _launch_spec_paths(tmp_path / "tree" / "gen") == {"specs/toy.yaml"}
