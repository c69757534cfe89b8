"""The plan the runtime executes: jobs with JSON params, needs, outputs and fingerprints.

Built from a freshly compiled spec, or read from the store's plan cache: the compiled plan of
a spec depends only on the spec file's bytes, the `--set` overrides and the compiler's code,
so `run` and `status` key a cache on exactly those (`<store>/plans/<key>.json`) and a run
whose spec did not change skips loading, validating and compiling it (the no-op run is most
of what a developer waits for). The cache also keeps the contract files the compile produced,
so the stale-`generated/` check needs no compile either.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PLAN_CACHE_FORMAT = 2  # 2: jobs carry resources
CPU_JOB = {"device": "cpu", "nodes": 1, "nproc": 1, "strategy": "none", "cpus": 1, "gpus": 0}
_COMPILER = Path(__file__).resolve().parents[1] / "compiler"


@dataclass(frozen=True)
class PlanJob:
    id: str
    kind: str
    needs: tuple[str, ...]
    params: dict[str, Any]  # the typed params as JSON (what the fingerprint hashed)
    outputs: dict[str, str]
    fingerprint: str
    resources: dict[str, Any] = field(default_factory=lambda: dict(CPU_JOB))  # placement (compiler.planning.params.ResourcesP); not fingerprinted


@dataclass(frozen=True)
class Plan:
    name: str
    version: str
    spec_hash: str
    spec_dir: Path
    jobs: tuple[PlanJob, ...]
    spec_file: str = ""  # the spec as given on the command line, for file:line:col in reports

    def job(self, job_id: str) -> PlanJob:
        for j in self.jobs:
            if j.id == job_id:
                return j
        raise KeyError(job_id)

    def ancestors(self, job_id: str) -> set[str]:
        needs = {j.id: j.needs for j in self.jobs}
        seen: set[str] = set()
        stack = list(needs[job_id])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(needs[node])
        return seen

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "spec_hash": self.spec_hash, "spec_dir": str(self.spec_dir),
                "spec_file": self.spec_file, "jobs": [{"id": j.id, "kind": j.kind, "needs": list(j.needs), "params": j.params, "outputs": j.outputs,
                          "resources": j.resources, "fingerprint": j.fingerprint} for j in self.jobs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        jobs = tuple(PlanJob(j["id"], j["kind"], tuple(j["needs"]), j["params"], j["outputs"], j["fingerprint"],
                             j.get("resources") or dict(CPU_JOB)) for j in data["jobs"])
        return cls(data["name"], data["version"], data["spec_hash"], Path(data["spec_dir"]), jobs, data.get("spec_file", ""))

    @classmethod
    def from_compiled(cls, compiled) -> "Plan":
        jobs = tuple(PlanJob(pj.id, pj.job.kind, tuple(pj.job.needs), pj.job.params.model_dump(mode="json"),
                             dict(pj.job.outputs), pj.fingerprint,
                             pj.job.resources.model_dump(mode="json")) for pj in compiled.jobs)
        return cls(compiled.spec.name, compiled.spec.version, compiled.spec_hash, Path(compiled.validated.spec_dir).absolute(), jobs)


def compiler_digest() -> str:
    """sha256 over the compiler's source files: any change to it invalidates every cached plan."""
    h = hashlib.sha256()
    for path in sorted(_COMPILER.rglob("*.py")):
        h.update(path.relative_to(_COMPILER).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _cache_key(spec: str, overrides: list[str]) -> str:
    payload = {"format": PLAN_CACHE_FORMAT, "spec": os.path.abspath(spec), "bytes": hashlib.sha256(Path(spec).read_bytes()).hexdigest(),
               "overrides": list(overrides), "compiler": compiler_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load(spec: str, overrides: list[str], store_root: Path | None) -> tuple[Plan, dict[str, str]]:
    """(plan, contract files {relative path: text}); compiled only when the cache has no entry."""
    cache = None
    if store_root is not None and Path(spec).is_file():
        cache = Path(store_root) / "plans" / f"{_cache_key(spec, overrides)}.json"
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            return replace(Plan.from_json(data["plan"]), spec_file=spec), data["contracts"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    from compiler.output.build import compile_one
    from compiler.planning.compile import contract_files

    compiled = compile_one(spec, overrides)
    plan, contracts = replace(Plan.from_compiled(compiled), spec_file=spec), contract_files(compiled)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".plan-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"plan": plan.as_json(), "contracts": contracts}, fh)
        os.replace(tmp, cache)
    return plan, contracts
