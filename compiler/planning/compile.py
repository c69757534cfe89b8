"""Compile a validated spec into a plan (jobs with fingerprints) and the generated files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from compiler.planning import contracts
from compiler.core.canonical import canonical_json, pretty_json, sha256_text
from compiler.analysis.derived import Derived, derive
from compiler.planning.graph import PlannedJob, build_graph, plan_jobs
from compiler.planning.jobs import build_jobs
from compiler.reading.validate import Validated

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class Compiled:
    validated: Validated
    spec_hash: str
    spec_path: str  # posix; relative to the repository root or OUT's parent, else absolute (relative_spec_path)
    jobs: list[PlannedJob]
    derived: Derived

    @cached_property
    def graph(self) -> "nx.DiGraph":
        """The plan as a networkx DiGraph (built on demand: compiling does not import networkx)."""
        return build_graph([j.job for j in self.jobs])

    @property
    def spec(self):
        return self.validated.spec

    def job(self, job_id: str) -> PlannedJob:
        for j in self.jobs:
            if j.id == job_id:
                return j
        raise KeyError(job_id)

    def plan(self) -> dict:
        s = self.spec
        return {
            "spec": {"name": s.name, "version": s.version, "hash": self.spec_hash, "path": self.spec_path},
            "overrides": list(self.validated.overrides),
            "jobs": [j.as_json() for j in self.jobs],
        }


def spec_hash(validated: Validated) -> str:
    """The spec's identity. Unset optional fields (None) are left out, so a field added to the format
    later does not change the hash of specs that do not use it (nor, through the package's stamp,
    their packages)."""
    return sha256_text(canonical_json(validated.spec.model_dump(mode="json", exclude_none=True)))


def _repository_root(folder: str) -> str | None:
    """The nearest folder at or above `folder` holding `.git` (a folder, or a worktree's file)."""
    while True:
        if os.path.exists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def relative_spec_path(spec_path: str, out_root: str) -> str:
    """The spec path written into plan.json, the README and the launch files (docs/scale.md).

    Relative to the repository root when the output root and the spec are in one git
    repository (launch files run from the root, wherever OUT is inside it); relative to OUT's
    parent when no repository holds OUT and the spec is under that parent (an unpacked tree
    without .git); otherwise absolute, so a launch file written outside the repository still
    finds the spec."""
    spec = os.path.abspath(spec_path)
    out = os.path.abspath(out_root)
    root = _repository_root(out)
    base = root if root is not None else os.path.dirname(out)
    if _inside(spec, base):
        return os.path.relpath(spec, base).replace(os.sep, "/")
    return spec.replace(os.sep, "/")


def compile_spec(validated: Validated, out_root: str = "generated") -> Compiled:
    jobs = plan_jobs(build_jobs(validated.spec))
    return Compiled(validated, spec_hash(validated), relative_spec_path(validated.path, out_root), jobs, derive(validated.spec))


def contract_files(c: Compiled) -> dict[str, str]:
    s = c.spec
    return {
        "plan.json": pretty_json(c.plan()),
        "contracts/io.json": pretty_json(contracts.io_contract(s)),
        "contracts/tokens.json": pretty_json(contracts.tokens_contract(s)),
        "contracts/quantization.json": pretty_json(contracts.quantization_contract(s)),
        "contracts/precision.json": pretty_json(contracts.precision_contract(s)),
        "contracts/gates.json": pretty_json(contracts.gates_contract(s)),
        "contracts/budget.json": pretty_json(contracts.budget_contract(s, c.derived)),
    } | _chat_template_file(c)


def _chat_template_file(c: Compiled) -> dict[str, str]:
    """The spec's chat template, copied as a contract (a reviewer sees a template change in the diff; the
    package and release carry the same text). A template the compiler cannot read (a URI) is left to the
    tokenizer job, which fails on it by name."""
    value = c.spec.tokenizer.chat_template
    if value is None or "://" in value:
        return {}
    path = value if os.path.isabs(value) else os.path.join(c.validated.spec_dir, value)
    try:
        with open(path, encoding="utf-8") as fh:
            return {"contracts/chat_template.jinja": fh.read()}
    except (OSError, UnicodeDecodeError):
        return {}
