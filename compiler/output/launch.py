"""Launch files for the training jobs: a Slurm batch script and a Kubernetes Job per job.

Every training job that runs under torchrun (teacher when it trains, train, qat) gets
`launch/<job>.sbatch` and `launch/<job>.k8s.yaml`. Both start the same command, once per node:

  torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:29500
           --rdzv-id ID -m runtime.cli launch SPEC --job JOB --workdir STORE

N, P, SPEC and JOB are written in; HOST, ID and STORE are references to the environment
variables `MODELSPEC_RDZV_HOST`, `MODELSPEC_RDZV_ID` and `MODELSPEC_STORE`, which the Slurm
script sets (the first node of the allocation, `$SLURM_JOB_ID`, `$MODELSPEC_STORE` or
`.modelspec`) and the Kubernetes container declares (pod 0 of the indexed Job through the
headless Service, the Job's uid, the claim's mount path). Kubernetes expands `$(NAME)` in a
command; the script writes `"${NAME}"`. docs/scale.md explains the choice.

Quoting: the sbatch script is rendered from `templates/launch.sbatch.j2` with finished
strings: every literal word passes through `shlex.quote`, comments get JSON-escaped text (no
newline can leave a comment). The manifest is built as data and dumped by ruamel's safe
dumper. A `$` in the spec path is refused: Kubernetes would expand `$(...)` in it, and envsubst
(how the image and claim parameters are filled in) would expand `$NAME`.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
from dataclasses import dataclass

from compiler.planning.compile import Compiled
from compiler.core.errors import Problem, SpecError
from compiler.planning.params import ResourcesP

RDZV_PORT = 29500
ENV_HOST, ENV_ID, ENV_STORE = "MODELSPEC_RDZV_HOST", "MODELSPEC_RDZV_ID", "MODELSPEC_STORE"
DEFAULT_STORE = ".modelspec"  # Slurm: relative to the submit folder, which every node must share
STORE_MOUNT = "/store"  # Kubernetes: where the claim is mounted in the container
IMAGE_PARAM, CLAIM_PARAM = "MODELSPEC_IMAGE", "MODELSPEC_STORE_CLAIM"
RETRIES_PER_NODE = 3  # Kubernetes backoffLimit = this x nodes: a lost node costs every pod a restart
K8S_NAME_MAX = 63


@dataclass(frozen=True)
class Ref:
    """A reference to an environment variable inside a command word."""

    name: str


Word = tuple[str | Ref, ...]


def torchrun_words(res: ResourcesP, spec_path: str, job_id: str) -> list[Word]:
    """The one command both launchers run on every node, as words of literal text and references."""
    literal = ["torchrun", "--nnodes", str(res.nodes), "--nproc-per-node", str(res.nproc), "--rdzv-backend", "c10d",
               "--rdzv-endpoint"]
    words: list[Word] = [(w,) for w in literal]
    words += [(Ref(ENV_HOST), f":{RDZV_PORT}"), ("--rdzv-id",), (Ref(ENV_ID),)]
    words += [(w,) for w in ("-m", "runtime.cli", "launch", spec_path, "--job", job_id, "--workdir")]
    words.append((Ref(ENV_STORE),))
    return words


def _dq(text: str) -> str:
    """Text inside a double-quoted shell word: $, `, \\ and " escaped."""
    return "".join("\\" + c if c in '$`\\"' else c for c in text)


def shell_word(word: Word) -> str:
    if all(isinstance(p, str) for p in word):
        return shlex.quote("".join(word))  # type: ignore[arg-type]
    return '"' + "".join("${%s}" % p.name if isinstance(p, Ref) else _dq(p) for p in word) + '"'


def k8s_arg(word: Word) -> str:
    """A Kubernetes command entry: `$(NAME)` for references, `$$` for a literal `$`."""
    return "".join(f"$({p.name})" if isinstance(p, Ref) else p.replace("$", "$$") for p in word)


def k8s_name(spec_name: str, job_id: str, nodes: int) -> str:
    """A DNS-1035 label for the Job and its Service; pod hostnames `<name>-<index>` stay within 63."""
    base = f"{spec_name}-{job_id}"
    if not base[0].isalpha():
        base = "m" + base
    limit = K8S_NAME_MAX - len(f"-{nodes - 1}")
    if len(base) > limit:
        base = base[: limit - 9].rstrip("-") + "-" + hashlib.sha256(base.encode()).hexdigest()[:8]
    return base


def launched_jobs(c: Compiled) -> list:
    """The jobs torchrun launches: those with a distributed strategy (never `none`)."""
    return [j for j in c.jobs if j.job.resources.strategy != "none"]


def _check_path(c: Compiled) -> None:
    if "$" in c.spec_path:
        raise SpecError([Problem("<command line>", 1, 1, "SPECS",
                                 f"spec path {c.spec_path!r} contains '$', which Kubernetes and envsubst would expand "
                                 "in the generated launch manifests", "rename the spec file")])


def _comment(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def sbatch_text(c: Compiled, job_id: str, res: ResourcesP) -> str:
    from compiler.output.text import environment

    words = torchrun_words(res, c.spec_path, job_id)
    directives = [f"--job-name={c.spec.name}-{job_id}", f"--nodes={res.nodes}", "--ntasks-per-node=1"]
    if res.device == "cuda":
        directives.append(f"--gpus-per-node={res.gpus}")
    directives += [f"--cpus-per-task={res.cpus}", "--requeue", "--open-mode=append", "--output=%x-%j.out"]
    context = {
        "spec_path": _comment(c.spec_path), "job": job_id, "name": c.spec.name,
        "placement": _placement(res), "directives": directives,
        "env_host": ENV_HOST, "env_id": ENV_ID, "env_store": ENV_STORE, "default_store": shlex.quote(DEFAULT_STORE),
        "port": RDZV_PORT, "command": " ".join(shell_word(w) for w in words),
    }
    return environment().get_template("launch.sbatch.j2").render(context)


def _placement(res: ResourcesP) -> str:
    return f"{res.nodes} node(s) x {res.nproc} process(es), {res.device}, {res.strategy}"


def k8s_documents(c: Compiled, job_id: str, res: ResourcesP) -> list[dict]:
    name = k8s_name(c.spec.name, job_id, res.nodes)
    labels = {"app.kubernetes.io/name": "modelspec", "modelspec/spec": c.spec.name, "modelspec/job": job_id,
              "modelspec/launch": name}
    amounts = {"cpu": str(res.cpus)} | ({"nvidia.com/gpu": str(res.gpus)} if res.device == "cuda" else {})
    env = [
        {"name": ENV_HOST, "value": f"{name}-0.{name}"},
        {"name": ENV_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}},
        {"name": ENV_STORE, "value": STORE_MOUNT},
    ]
    container = {
        "name": job_id,
        "image": "${%s}" % IMAGE_PARAM,
        "command": [k8s_arg(w) for w in torchrun_words(res, c.spec_path, job_id)],
        "env": env,
        "ports": [{"containerPort": RDZV_PORT, "name": "rendezvous"}],
        "resources": {"requests": amounts, "limits": dict(amounts)},
        "volumeMounts": [{"name": "store", "mountPath": STORE_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"modelspec/launch": name},
                 "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}]},
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "completionMode": "Indexed", "completions": res.nodes, "parallelism": res.nodes,
            "backoffLimit": RETRIES_PER_NODE * res.nodes,
            "template": {"metadata": {"labels": dict(labels)}, "spec": {  # copies: no YAML anchors
                "subdomain": name, "restartPolicy": "OnFailure", "containers": [container],
                "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": "${%s}" % CLAIM_PARAM}},
                            {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            }},
        },
    }
    return [service, job]


def k8s_text(c: Compiled, job_id: str, res: ResourcesP) -> str:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    body = io.StringIO()
    yaml.dump_all(k8s_documents(c, job_id, res), body)
    header = [
        f"# Generated by `modelspec compile` from {_comment(c.spec_path)}; do not edit.",
        f"# Job `{job_id}` of {c.spec.name}: {_placement(res)}; one pod per node, one torchrun per pod.",
        "# Parameters, filled in when applying:",
        f"#   ${{{IMAGE_PARAM}}}  the container image: this repository at its working directory, modelspec installed",
        f"#   ${{{CLAIM_PARAM}}}  a ReadWriteMany PersistentVolumeClaim holding the store, mounted at {STORE_MOUNT}",
        f"# Apply: envsubst '${IMAGE_PARAM} ${CLAIM_PARAM}' < {job_id}.k8s.yaml | kubectl apply -f -",
        "# A lost node: its pod is recreated, the others restart, training resumes from the newest checkpoint (docs/scale.md).",
    ]
    return "\n".join(header) + "\n---\n" + body.getvalue()


def launch_files(c: Compiled) -> dict[str, str]:
    """{"launch/<job>.sbatch": ..., "launch/<job>.k8s.yaml": ...} for every launched job."""
    jobs = launched_jobs(c)
    if jobs:
        _check_path(c)
    files = {}
    for j in jobs:
        files[f"launch/{j.id}.sbatch"] = sbatch_text(c, j.id, j.job.resources)
        files[f"launch/{j.id}.k8s.yaml"] = k8s_text(c, j.id, j.job.resources)
    return files
