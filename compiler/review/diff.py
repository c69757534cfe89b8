"""Semantic spec diff: the class of each change and its impact (issue 6).

Both sides are validated and compiled (`sides.py`); nothing is compared as text. The
changes come from the tree diff (`tree.py`); a change's class is the truth of the compiled
plans: the jobs whose params changed (attributed to a change through `jobs.READS`) and the
compiled contracts (io.json, tokens.json, `breaks.py`) for `BREAKING_CONTRACT`. This module
owns the classes, the derived deltas, the version rule and the report. Rendering lives in
`render.py`, the command in `compiler/cli/diff.py`; docs/diff.md has the rules.
"""

from __future__ import annotations

import json
import re

from compiler.review.breaks import io_breaks, tokens_breaks, unified
from compiler.review.sides import Side, load_pair
from compiler.review.tree import overlaps, tree_diff

# Classes, least to most severe.
CLASSES = ("COSMETIC", "REVERIFY", "REEXPORT", "RETRAIN", "BREAKING_CONTRACT")
RANK = {c: i for i, c in enumerate(CLASSES)}
KIND_CLASS = {
    "tokenizer": "RETRAIN", "dataset": "RETRAIN", "teacher": "RETRAIN", "generate": "RETRAIN", "train": "RETRAIN",
    "qat": "RETRAIN",
    "export": "REEXPORT", "convert": "REEXPORT",
    "verify": "REVERIFY", "parity": "REVERIFY", "eval": "REVERIFY", "gates": "REVERIFY", "publish": "REVERIFY",
}
FAIL_ON = {"breaking": "BREAKING_CONTRACT", "retrain": "RETRAIN", "reexport": "REEXPORT", "reverify": "REVERIFY"}
CONTRACTS = ("contracts/io.json", "contracts/tokens.json", "contracts/quantization.json",
             "contracts/precision.json", "contracts/gates.json", "contracts/budget.json",
             "contracts/chat_template.jinja")  # the last only when the spec names a template


def worst(classes) -> str:
    return max(classes, key=RANK.__getitem__, default="COSMETIC")


# --- derived -----------------------------------------------------------------------------

def _delta(old, new) -> dict:
    d = None if old is None or new is None else new - old
    return {"old": old, "new": new, "delta": d}


def derived_deltas(old, new) -> dict:
    od, nd = old.derived.as_json(old.spec), new.derived.as_json(new.spec)
    mib = 1 << 20
    out = {
        "parameters": _delta(od["parameters"], nd["parameters"]),
        "package_size_mib": _delta(round(od["weight_bytes"] / mib, 3), round(nd["weight_bytes"] / mib, 3)),
        "weight_bytes": _delta(od["weight_bytes"], nd["weight_bytes"]),
        "kv_cache_bytes_per_token": _delta(od["kv_cache_bytes_per_token"], nd["kv_cache_bytes_per_token"]),
        "training_flops": _delta(od["training_flops"], nd["training_flops"]),
        "teacher_training_flops": _delta(od["teacher_training_flops"], nd["teacher_training_flops"]),
    }
    if out["package_size_mib"]["delta"] is not None:
        out["package_size_mib"]["delta"] = round(out["package_size_mib"]["delta"], 3)
    profiles = {}
    for name in list(od["profiles"]) + [n for n in nd["profiles"] if n not in od["profiles"]]:
        a, b = od["profiles"].get(name), nd["profiles"].get(name)
        profiles[name] = {"total_bytes": _delta(a and a["total_bytes"], b and b["total_bytes"]),
                          "headroom_bytes": _delta(a and a["headroom_bytes"], b and b["headroom_bytes"])}
    out["profiles"] = profiles
    return out


# --- classification ----------------------------------------------------------------------

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def version_rule(old: str, new: str) -> dict:
    """A breaking change needs a major bump (for 0.y.z, a minor bump, as semver allows)."""
    o, n = _SEMVER.match(old), _SEMVER.match(new)
    (om, omi), (nm, nmi) = (int(o[1]), int(o[2])), (int(n[1]), int(n[2]))
    bumped = nm > om or (om == 0 and nm == 0 and nmi > omi)
    required = f"{om + 1}.0.0" if om > 0 else f"0.{omi + 1}.0"
    return {"old": old, "new": new, "major_bump": bumped, "required": required}


def diff_compiled(old, new, old_label: str, new_label: str) -> dict:
    """The JSON-ready report of two compiled specs (see docs/diff.md)."""
    from compiler.planning.compile import contract_files
    from compiler.planning.jobs import KINDS, READS

    changes = tree_diff(old.spec.model_dump(mode="json"), new.spec.model_dump(mode="json"))

    # jobs: fingerprints are the truth; params tell which jobs a change reached directly
    ob, nb = {j.id: j for j in old.jobs}, {j.id: j for j in new.jobs}
    invalidated = [j.id for j in new.jobs if j.id in ob and ob[j.id].fingerprint != j.fingerprint]
    cached = [j.id for j in new.jobs if j.id in ob and ob[j.id].fingerprint == j.fingerprint]
    added = [j.id for j in new.jobs if j.id not in ob]
    removed = [j.id for j in old.jobs if j.id not in nb]
    direct = [j.id for j in new.jobs if j.id in ob and (ob[j.id].job.params != j.job.params or ob[j.id].job.kind != j.job.kind)]
    reached = {nb[i].job.kind for i in direct + added} | {ob[i].job.kind for i in removed}

    # contracts
    of, nf = contract_files(old), contract_files(new)
    files = {}
    for name in CONTRACTS:
        if of.get(name, "") != nf.get(name, ""):
            files[name] = unified(of.get(name, ""), nf.get(name, ""), name)
    breaks = io_breaks(json.loads(of["contracts/io.json"]), json.loads(nf["contracts/io.json"])) + tokens_breaks(
        json.loads(of["contracts/tokens.json"]), json.loads(nf["contracts/tokens.json"]))

    rows = []
    attributed: set[str] = set()
    for c in changes:
        kinds = [k for k in KINDS if k in reached and any(overlaps(r, c.keys) for r in READS[k])]
        attributed.update(kinds)
        brk = [b.what for b in breaks if b.caused_by(c)]
        cls = "BREAKING_CONTRACT" if brk else worst(KIND_CLASS[k] for k in kinds)
        row = {"path": c.path, "old": c.old, "new": c.new, "class": cls, "kind": c.kind, "jobs": kinds}
        if brk:
            row["breaking"] = brk
        rows.append(row)
    unattributed = sorted(reached - attributed, key=KINDS.index)
    top = worst([r["class"] for r in rows] + [KIND_CLASS[k] for k in unattributed]
                + (["BREAKING_CONTRACT"] if breaks else []))

    errors = []
    version = version_rule(old.spec.version, new.spec.version)
    if top == "BREAKING_CONTRACT" and not version["major_bump"]:
        errors.append(f"BREAKING_CONTRACT change without a major version bump ({version['old']} -> {version['new']}): "
                      f"set version: {version['required']} (or pass --allow-unversioned)")
    return {
        "class": top,
        "old": {"source": old_label, "name": old.spec.name, "version": old.spec.version, "spec_hash": old.spec_hash},
        "new": {"source": new_label, "name": new.spec.name, "version": new.spec.version, "spec_hash": new.spec_hash},
        "changes": rows,
        "jobs": {"invalidated": invalidated, "cached": cached, "added": added, "removed": removed,
                 "direct": direct, "unattributed_kinds": unattributed},
        "contracts": {"changed": files, "unchanged": [n for n in CONTRACTS if n not in files],
                      "breaking": [{"file": b.file, "what": b.what} for b in breaks]},
        "derived": derived_deltas(old, new),
        "version": version,
        "errors": errors,
    }


def diff_sides(old: Side, new: Side) -> dict:
    a, b = load_pair(old, new)
    return diff_compiled(a, b, old.source, new.source)


def exceeds(report_class: str, fail_on: str | None) -> bool:
    return fail_on is not None and RANK[report_class] >= RANK[FAIL_ON[fail_on]]
