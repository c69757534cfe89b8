"""Semantic spec diff: what changed by key path, its class, and its impact (issue 6).

Both sides are validated and compiled; nothing is compared as text. A change's class is the
truth of the compiled plans: the jobs whose params changed (attributed to a change through
`jobs.READS`) and the compiled contracts (io.json, tokens.json) for `BREAKING_CONTRACT`.
Rendering lives in `diff_render.py`, the command in `cli_diff.py`; docs/diff.md has the rules.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from compiler.core.errors import Problem, SpecError

# Classes, least to most severe.
CLASSES = ("COSMETIC", "REVERIFY", "REEXPORT", "RETRAIN", "BREAKING_CONTRACT")
RANK = {c: i for i, c in enumerate(CLASSES)}
KIND_CLASS = {
    "tokenizer": "RETRAIN", "dataset": "RETRAIN", "teacher": "RETRAIN", "train": "RETRAIN", "qat": "RETRAIN",
    "export": "REEXPORT", "convert": "REEXPORT",
    "verify": "REVERIFY", "parity": "REVERIFY", "eval": "REVERIFY", "gates": "REVERIFY", "publish": "REVERIFY",
}
FAIL_ON = {"breaking": "BREAKING_CONTRACT", "retrain": "RETRAIN", "reexport": "REEXPORT", "reverify": "REVERIFY"}

# Lists whose elements have an identity (matched by it, not by index); key paths without indexes.
IDENTITY: dict[tuple[str, ...], tuple[str, ...]] = {
    ("gates",): ("metric", "op"),
    ("quantization", "weights", "rules"): ("match",),
    ("precision", "islands"): ("module", "op"),  # whichever the island has
    ("deployment", "profiles"): ("name",),
}
SETS = {("shapes", "prefill")}  # lists that are sets (ascending and unique by rule)
CONTRACTS = ("contracts/io.json", "contracts/tokens.json", "contracts/quantization.json",
             "contracts/precision.json", "contracts/gates.json", "contracts/budget.json")


def worst(classes) -> str:
    return max(classes, key=RANK.__getitem__, default="COSMETIC")


# --- loading a side -----------------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    source: str  # what the user wrote: a path or REF:path
    path: str  # the spec's path in the working tree (data paths resolve against its folder)
    ref: str | None
    text: str | None  # the REF side's text (None: read from path)


def parse_side(arg: str) -> Side:
    """A file that exists is a file; otherwise `REF:path` when there is a colon."""
    if os.path.exists(arg) or ":" not in arg:
        return Side(arg, arg, None, None)
    ref, _, path = arg.partition(":")
    return Side(arg, path, ref, None)


def _git(args: list[str], cwd: str):
    import subprocess  # only REF sides pay for it

    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)


def git_toplevel(cwd: str = ".") -> str:
    import subprocess

    try:
        out = _git(["rev-parse", "--show-toplevel"], cwd)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SpecError([Problem("<git>", 1, 1, "<root>", f"cannot run git: {exc}", "install git")]) from None
    if out.returncode != 0:
        raise SpecError([Problem("<git>", 1, 1, "<root>", "not inside a git repository",
                                 "REF:path and --base read specs from git; run modelspec diff inside the repository")])
    return out.stdout.decode().strip()


def git_show(ref: str, path: str) -> str | None:
    """The text of `path` (a working-tree path) at `ref`; None when the ref lacks the file.

    `git show REF:path` with an argument list (never a shell); a bad ref is a SpecError."""
    label = f"{ref}:{path}"
    if not ref or ref.startswith("-") or any(c in ref for c in "\0\n"):
        raise SpecError([Problem(label, 1, 1, "<root>", f"'{ref}' is not a git ref", "e.g. origin/main:specs/toy.yaml")])
    top = git_toplevel(os.path.dirname(os.path.abspath(path)) if os.path.isdir(os.path.dirname(os.path.abspath(path))) else ".")
    rel = os.path.relpath(os.path.abspath(path), top).replace(os.sep, "/")
    if rel.startswith("../"):
        raise SpecError([Problem(label, 1, 1, "<root>", f"{path} is outside the git repository {top}", None)])
    check = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], top)
    if check.returncode != 0:
        raise SpecError([Problem(label, 1, 1, "<root>", f"unknown git ref '{ref}'",
                                 "name a branch, tag or commit that exists locally (git fetch first for origin/...)")])
    out = _git(["show", f"{check.stdout.decode().strip()}:{rel}"], top)
    if out.returncode != 0:
        return None
    try:
        return out.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([Problem(label, 1, 1, "<root>", "file is not valid UTF-8", "save the spec as UTF-8")]) from None


def load_side(side: Side):
    """Validate and compile one side (SpecError on any problem)."""
    from compiler.planning.compile import compile_spec
    from compiler.reading.loader import load_text
    from compiler.reading.validate import Validated, validate_doc, validate_file

    if side.ref is None:
        validated = validate_file(side.path)
    else:
        text = side.text if side.text is not None else git_show(side.ref, side.path)
        if text is None:
            raise SpecError([Problem(side.source, 1, 1, "<root>", f"'{side.path}' does not exist at {side.ref}",
                                     "check the path (relative to the current folder) and the ref")])
        doc = load_text(text, side.source)
        spec = validate_doc(doc, os.path.dirname(os.path.abspath(side.path)))
        validated = Validated(spec, doc, side.path, ())
    return compile_spec(validated)


def load_pair(old: Side, new: Side):
    """Both sides, or one SpecError with the problems of both."""
    problems: list[Problem] = []
    out = []
    for side in (old, new):
        try:
            out.append(load_side(side))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return out[0], out[1]


# --- the semantic tree diff ---------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    path: str  # display path, identity selectors in brackets: gates[metric=...,op=>=].value
    keys: tuple[str, ...]  # the key path without selectors (what READS is matched against)
    old: Any
    new: Any
    kind: str  # changed | added | removed | reordered


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and (isinstance(a, bool) or isinstance(b, bool)):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _join(display: str, key: str) -> str:
    return f"{display}.{key}" if display else key


def _identity(item: Any, fields: tuple[str, ...]) -> tuple | None:
    if not isinstance(item, dict):
        return None
    ident = tuple((f, item[f]) for f in fields if f in item and item[f] is not None)
    return ident or None


_PLAIN = re.compile(r"^[A-Za-z0-9_.*/-]+$")


def _selector(ident: tuple) -> str:
    """`[metric=eval.json_validity,op=">="]`: values other than plain names are JSON-quoted."""
    return "[" + ",".join(f"{k}={v if _PLAIN.match(str(v)) else json.dumps(v)}" for k, v in ident) + "]"


def tree_diff(old: Any, new: Any, keys: tuple[str, ...] = (), display: str = "") -> list[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for k in list(old) + [k for k in new if k not in old]:
            if k not in new:
                out.append(Change(_join(display, k), keys + (k,), old[k], None, "removed"))
            elif k not in old:
                out.append(Change(_join(display, k), keys + (k,), None, new[k], "added"))
            else:
                out.extend(tree_diff(old[k], new[k], keys + (k,), _join(display, k)))
        return out
    if isinstance(old, list) and isinstance(new, list):
        if keys in SETS:
            return _set_diff(old, new, keys, display)
        if keys in IDENTITY:
            matched = _identity_diff(old, new, keys, display, IDENTITY[keys])
            if matched is not None:
                return matched
        out = []
        for i in range(max(len(old), len(new))):
            d = f"{display}[{i}]"
            if i >= len(new):
                out.append(Change(d, keys, old[i], None, "removed"))
            elif i >= len(old):
                out.append(Change(d, keys, None, new[i], "added"))
            else:
                out.extend(tree_diff(old[i], new[i], keys, d))
        return out
    if _same(old, new):
        return []
    return [Change(display or "<root>", keys, old, new, "changed")]


def _set_diff(old: list, new: list, keys, display) -> list[Change]:
    out = [Change(f"{display}[{v}]", keys, v, None, "removed") for v in old if v not in new]
    return out + [Change(f"{display}[{v}]", keys, None, v, "added") for v in new if v not in old]


def _identity_diff(old: list, new: list, keys, display, fields) -> list[Change] | None:
    oi, ni = [_identity(x, fields) for x in old], [_identity(x, fields) for x in new]
    if None in oi or None in ni or len(set(oi)) != len(oi) or len(set(ni)) != len(ni):
        return None  # no usable identity (duplicates): fall back to indexes
    old_by, new_by = dict(zip(oi, old)), dict(zip(ni, new))
    out: list[Change] = []
    for ident in oi:
        if ident not in new_by:
            out.append(Change(display + _selector(ident), keys, old_by[ident], None, "removed"))
        else:
            out.extend(tree_diff(old_by[ident], new_by[ident], keys, display + _selector(ident)))
    out += [Change(display + _selector(i), keys, None, new_by[i], "added") for i in ni if i not in old_by]
    common_old = [i for i in oi if i in new_by]
    common_new = [i for i in ni if i in old_by]
    if common_old != common_new:
        out.append(Change(display, keys, [_selector(i)[1:-1] for i in common_old],
                          [_selector(i)[1:-1] for i in common_new], "reordered"))
    return out


# --- contracts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Break:
    file: str
    what: str
    causes: tuple[str, ...]  # spec key paths that can cause it (matched against changes)
    values: frozenset = frozenset()  # for set elements (shapes.prefill): only removing one of these causes it

    def caused_by(self, c: "Change") -> bool:
        for cause in self.causes:
            if not overlaps(cause, c.keys):
                continue
            if self.values and c.keys in SETS and not (c.kind == "removed" and c.old in self.values):
                continue
            return True
        return False


_IO_SHAPE = ("architecture", "shapes", "export.coreml")
_DTYPE = ("quantization.kv_cache", "precision", "architecture.tie_embeddings")


def _tensors(fn: dict, group: str) -> dict[str, dict]:
    return {t["name"]: t for t in fn.get(group) or []}


def io_breaks(old: dict, new: dict) -> list[Break]:
    """What a consumer of the package sees change incompatibly in contracts/io.json."""
    f = "contracts/io.json"
    out: list[Break] = []
    ofn, nfn = old.get("functions", {}), new.get("functions", {})
    for name in ofn:
        if name not in nfn:
            lens = frozenset(ofn[name].get("seq_lens") or []) if ofn[name].get("role") == "prefill" else frozenset()
            where = ("shapes.prefill",) if lens else ("shapes.decode",)
            out.append(Break(f, f"function '{name}' removed", where + ("export.coreml.packaging",), lens))
    for name in (n for n in ofn if n in nfn):
        o, n = ofn[name], nfn[name]
        removed = set(o.get("seq_lens") or []) - set(n.get("seq_lens") or [])
        if removed:
            out.append(Break(f, f"{name}: sequence lengths {sorted(removed)} removed", ("shapes.prefill",), frozenset(removed)))
        for group in ("inputs", "outputs", "states"):
            ot, nt = _tensors(o, group), _tensors(n, group)
            for t in ot:
                if t not in nt:
                    out.append(Break(f, f"{name}: {group[:-1]} '{t}' removed", ("shapes.decode", "export.coreml")))
            for t in nt:
                if t not in ot and group != "outputs":  # a new output is compatible; a new input is not
                    out.append(Break(f, f"{name}: {group[:-1]} '{t}' added", ("shapes.decode", "export.coreml")))
            for t in (t for t in ot if t in nt):
                a, b = ot[t], nt[t]
                if a.get("dtype") != b.get("dtype"):
                    out.append(Break(f, f"{name}: {group[:-1]} '{t}' dtype {a.get('dtype')} -> {b.get('dtype')}", _DTYPE))
                if group != "states" and a.get("shape") != b.get("shape"):
                    out.append(Break(f, f"{name}: {group[:-1]} '{t}' shape {a.get('shape')} -> {b.get('shape')}", _IO_SHAPE))
                eo = [tuple(s) for s in a.get("enumerated_shapes") or []]
                en = {tuple(s) for s in b.get("enumerated_shapes") or []}
                gone = [list(s) for s in eo if s not in en]
                if gone and b.get("enumerated_shapes") is not None:
                    out.append(Break(f, f"{name}: {group[:-1]} '{t}' enumerated shapes {gone} removed", ("shapes.prefill",),
                                     frozenset(s[-1] for s in gone)))
    return out


def tokens_breaks(old: dict, new: dict) -> list[Break]:
    f = "contracts/tokens.json"
    out: list[Break] = []
    if old.get("vocab_size") != new.get("vocab_size"):
        out.append(Break(f, f"vocab_size {old.get('vocab_size')} -> {new.get('vocab_size')}", ("architecture.vocab_size",)))
    ot, nt = old.get("special_tokens", {}), new.get("special_tokens", {})
    for name, tok in ot.items():
        cause = (f"tokenizer.special_tokens.{name}",)
        if name not in nt:
            out.append(Break(f, f"special token '{name}' removed", cause))
            continue
        for field in ("id", "text"):
            if tok.get(field) != nt[name].get(field):
                out.append(Break(f, f"special token '{name}' {field} {tok.get(field)!r} -> {nt[name].get(field)!r}", cause))
    return out


def unified(old: str, new: str, name: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}"))


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

def overlaps(read: str | tuple, keys: tuple[str, ...]) -> bool:
    r = tuple(read.split(".")) if isinstance(read, str) else read
    n = min(len(r), len(keys))
    return r[:n] == keys[:n]


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
        if of[name] != nf[name]:
            files[name] = unified(of[name], nf[name], name)
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


def base_sides(ref: str, paths: list[str]) -> tuple[list[tuple[Side, Side]], list[str], list[str]]:
    """(old, new) for every spec whose text differs at `ref`; the specs new and removed since `ref`."""
    pairs, new_specs, removed_specs, missing = [], [], [], []
    for path in paths:
        text = git_show(ref, path)
        if not os.path.exists(path):
            (missing if text is None else removed_specs).append(path)
            continue
        if text is None:
            new_specs.append(path)
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                current = fh.read()
        except (OSError, UnicodeDecodeError):
            current = None  # the new side's own load reports it
        if current == text:
            continue
        pairs.append((Side(f"{ref}:{path}", path, ref, text), Side(path, path, None, None)))
    if missing:
        raise SpecError([Problem(p, 1, 1, "<root>", f"no such spec, neither in the working tree nor at {ref}", "check the path")
                         for p in missing])
    return pairs, new_specs, removed_specs


def exceeds(report_class: str, fail_on: str | None) -> bool:
    return fail_on is not None and RANK[report_class] >= RANK[FAIL_ON[fail_on]]
