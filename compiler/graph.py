"""The job DAG (networkx) and fingerprints.

A job's fingerprint hashes the canonical JSON of its kind, code version, params and its
upstream fingerprints, so editing a spec value changes exactly the jobs that read it and
their descendants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .canonical import canonical_json, sha256_text
from .jobs import CODE_VERSIONS, Job

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
            "fingerprint": self.fingerprint,
        }


def build_graph(jobs: list[Job]) -> "nx.DiGraph":
    import networkx as nx

    graph = nx.DiGraph()
    ids = {j.id for j in jobs}
    if len(ids) != len(jobs):
        raise GraphError("duplicate job ids")
    for job in jobs:
        graph.add_node(job.id, job=job)
    for job in jobs:
        for need in job.needs:
            if need not in ids:
                raise GraphError(f"job '{job.id}' needs unknown job '{need}'")
            graph.add_edge(need, job.id)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    names = [edge[0] for edge in cycle] + [cycle[0][0]]
    raise GraphError(f"dependency cycle: {' -> '.join(names)}")


def topo_order(graph: "nx.DiGraph") -> list[str]:
    """Topological order; ties broken by the order the builders created the jobs."""
    import networkx as nx

    rank = {node: i for i, node in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=rank.__getitem__))


def fingerprint(job: Job, upstream: dict[str, str]) -> str:
    payload = {
        "kind": job.kind,
        "code_version": CODE_VERSIONS[job.kind],
        "params": job.params.model_dump(mode="json"),
        "upstream": {need: upstream[need] for need in sorted(job.needs)},
    }
    return sha256_text(canonical_json(payload))


def plan_jobs(jobs: list[Job]) -> tuple[list[PlannedJob], "nx.DiGraph"]:
    graph = build_graph(jobs)
    done: dict[str, str] = {}
    out = []
    for job_id in topo_order(graph):
        job = graph.nodes[job_id]["job"]
        fp = fingerprint(job, done)
        done[job_id] = fp
        out.append(PlannedJob(job, fp))
    return out, graph
