"""The job DAG and fingerprints.

Planning (cycle check and topological order) uses the standard library's graphlib, so that
compiling, and with it every `modelspec run`, does not pay for importing networkx; the
networkx DiGraph of the plan is built on demand (`Compiled.graph`) for explain and graph
rendering.

A job's fingerprint hashes the canonical JSON of its kind, code version, params and its
upstream fingerprints, so editing a spec value changes exactly the jobs that read it and
their descendants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from compiler.core.canonical import canonical_json, sha256_text
from compiler.planning.jobs import CODE_VERSIONS, Job

if TYPE_CHECKING:
    import networkx as nx


class GraphError(Exception):
    exit_code = 3


@dataclass(frozen=True)
class PlannedJob:
    job: Job
    fingerprint: str

    @property
    def id(self) -> str:
        return self.job.id

    def as_json(self) -> dict:
        j = self.job
        return {
            "id": j.id,
            "kind": j.kind,
            "needs": list(j.needs),
            "params": j.params.model_dump(mode="json"),
            "outputs": dict(sorted(j.outputs.items())),
            "resources": j.resources.model_dump(mode="json"),
            "fingerprint": self.fingerprint,
        }


def build_graph(jobs: list[Job]) -> "nx.DiGraph":
    import networkx as nx

    graph = nx.DiGraph()
    for job in jobs:
        graph.add_node(job.id, job=job)
    for job in jobs:
        for need in job.needs:
            graph.add_edge(need, job.id)
    return graph


def topo_order(jobs: list[Job]) -> list[str]:
    """Topological order; ties broken by the order the builders created the jobs.

    A cycle is an error naming every job on it."""
    import graphlib
    import heapq

    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise GraphError("duplicate job ids")
    known = set(ids)
    for job in jobs:
        for need in job.needs:
            if need not in known:
                raise GraphError(f"job '{job.id}' needs unknown job '{need}'")
    rank = {job_id: i for i, job_id in enumerate(ids)}
    sorter = graphlib.TopologicalSorter({j.id: set(j.needs) for j in jobs})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it against the edge direction
        raise GraphError(f"dependency cycle: {' -> '.join(cycle)}") from None
    ready: list[tuple[int, str]] = []
    order = []
    while sorter.is_active():
        for node in sorter.get_ready():
            heapq.heappush(ready, (rank[node], node))
        _, node = heapq.heappop(ready)
        order.append(node)
        sorter.done(node)
    return order


def fingerprint(job: Job, upstream: dict[str, str]) -> str:
    payload = {
        "kind": job.kind,
        "code_version": CODE_VERSIONS[job.kind],
        "params": job.params.model_dump(mode="json"),
        "upstream": {need: upstream[need] for need in sorted(job.needs)},
    }
    return sha256_text(canonical_json(payload))


def plan_jobs(jobs: list[Job]) -> list[PlannedJob]:
    by_id = {j.id: j for j in jobs}
    done: dict[str, str] = {}
    out = []
    for job_id in topo_order(jobs):
        job = by_id[job_id]
        fp = fingerprint(job, done)
        done[job_id] = fp
        out.append(PlannedJob(job, fp))
    return out
