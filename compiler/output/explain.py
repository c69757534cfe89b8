"""`modelspec explain`: what a job reads, why it exists and what invalidates it."""

from __future__ import annotations

import json

import networkx as nx

from compiler.planning.compile import Compiled
from compiler.planning.jobs import CODE_VERSIONS, READS, WHY


def explain_job(c: Compiled, job_id: str) -> dict:
    pj = c.job(job_id)
    job = pj.job
    ancestors = sorted(nx.ancestors(c.graph, job_id))
    descendants = sorted(nx.descendants(c.graph, job_id))
    params = job.params.model_dump(mode="json")
    result = {
        "id": job.id, "kind": job.kind, "why": WHY[job.kind], "needs": list(job.needs),
        "reads": list(READS[job.kind]), "code_version": CODE_VERSIONS[job.kind], "fingerprint": pj.fingerprint,
        "upstream": ancestors, "downstream": descendants, "params": params, "outputs": job.outputs,
    }
    lines = [
        f"{job.id} ({job.kind})",
        f"  why: {WHY[job.kind]}",
        f"  fingerprint: {pj.fingerprint}",
        f"  needs: {', '.join(job.needs) or '-'}",
        f"  reads spec paths: {', '.join(READS[job.kind])}",
        f"  invalidated by: a change to any value it reads, its code version ({CODE_VERSIONS[job.kind]}), or any upstream job: "
        f"{', '.join(ancestors) or '-'}",
        f"  invalidates when it changes: {', '.join(descendants) or '-'}",
        f"  outputs: {', '.join(f'{k}={v}' for k, v in sorted(job.outputs.items()))}",
    ]
    r = job.resources
    result["resources"] = r.model_dump(mode="json")
    lines.append(f"  placement: {r.nodes} node(s) x {r.nproc} process(es), {r.device}, {r.strategy} (not fingerprinted)")
    if r.strategy != "none":
        folder = f"generated/{c.spec.name}/launch"
        result["launch"] = [f"{folder}/{job.id}.sbatch", f"{folder}/{job.id}.k8s.yaml"]
        lines.append(f"  launch: {folder}/{job.id}.sbatch (Slurm), {folder}/{job.id}.k8s.yaml (Kubernetes); docs/scale.md")
    lines.append("  params:")
    lines += ["    " + line for line in json.dumps(params, indent=2, sort_keys=True).splitlines()]
    result["text"] = "\n".join(lines) + "\n"
    return result


def explain_plan(c: Compiled) -> dict:
    jobs = [{"id": j.id, "kind": j.job.kind, "why": WHY[j.job.kind], "fingerprint": j.fingerprint} for j in c.jobs]
    width = max(len(j["id"]) for j in jobs)
    text = "\n".join(f"{j['id']:<{width}}  {j['why']}" for j in jobs) + "\n"
    return {"jobs": jobs, "text": text}
