"""Cache keys and job states: plan fingerprint + external input content + upstream keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compiler.core.canonical import canonical_json, sha256_text

from .diffing import diff
from .hashing import tree_sha256
from .jobs import EXTERNAL_INPUTS
from .plan import Plan
from .remote import is_uri
from .remote import version as remote_version
from .store import Store


def external_inputs(kind: str, params: dict, spec_dir: Path) -> dict[str, str]:
    """Each external input's content identity: a local file's or folder's sha256, a remote one's version
    (ETag, generation, revision; runtime/remote) -- one metadata request, no download. A remote input
    that cannot be read raises RemoteInputError (a local one that is missing reads "missing")."""
    out = {}
    for attr in EXTERNAL_INPUTS.get(kind, ()):
        value = params.get(attr)
        if not value:
            continue
        if is_uri(value):
            out[value] = "remote:" + remote_version(value)
            continue
        path = Path(value) if Path(value).is_absolute() else spec_dir / value
        try:
            out[value] = tree_sha256(path)
        except (OSError, ValueError):
            out[value] = "missing"
    return out


@dataclass
class JobKey:
    id: str
    kind: str
    fingerprint: str
    key: str
    params: dict
    external: dict[str, str]
    upstream: dict[str, str]  # upstream id -> key


def job_keys(plan: Plan) -> dict[str, JobKey]:
    spec_dir = plan.spec_dir
    keys: dict[str, JobKey] = {}
    for pj in plan.jobs:
        job = pj
        params = job.params
        ext = external_inputs(job.kind, params, spec_dir)
        upstream = {n: keys[n].key for n in sorted(job.needs)}
        key = sha256_text(canonical_json({"fingerprint": pj.fingerprint, "external": ext, "upstream": upstream}))
        keys[job.id] = JobKey(job.id, job.kind, pj.fingerprint, key, params, ext, upstream)
    return keys


@dataclass
class JobState:
    id: str
    kind: str
    key: str
    state: str  # up_to_date | stale | missing
    reasons: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "key": self.key, "state": self.state, "reasons": self.reasons}


def job_states(plan: Plan, store: Store, keys: dict[str, JobKey] | None = None, verify: bool = True) -> list[JobState]:
    """`verify=False` trusts completion records without re-hashing their outputs (a report of a large store)."""
    keys = keys or job_keys(plan)
    index = store.index(plan.name)
    out = []
    for pj in plan.jobs:
        k = keys[pj.id]
        record = store.record(k.kind, k.key)
        if record is not None:
            bad = store.verify(k.kind, k.key, record) if verify else []
            if not bad:
                out.append(JobState(k.id, k.kind, k.key, "up_to_date"))
            else:
                out.append(JobState(k.id, k.kind, k.key, "stale", [f"output '{n}' missing or corrupt" for n in bad]))
            continue
        prev = index.get(k.id)
        if not prev:
            out.append(JobState(k.id, k.kind, k.key, "missing", ["never ran with this store"]))
            continue
        reasons = [f"param {r}" for r in diff(prev.get("params", {}), k.params)]
        reasons += [f"input file {p} changed" for p in sorted(set(prev.get("external", {})) | set(k.external))
                    if prev.get("external", {}).get(p) != k.external.get(p)]
        reasons += [f"upstream '{u}' changed" for u in k.upstream if prev.get("upstream", {}).get(u) != k.upstream[u]]
        if prev.get("fingerprint") == k.fingerprint and not reasons:
            reasons.append("outputs for this key are missing from the store")
        elif not reasons:
            reasons.append("code version changed")
        out.append(JobState(k.id, k.kind, k.key, "stale", reasons))
    return out
