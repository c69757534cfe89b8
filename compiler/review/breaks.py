"""Contract breaks: what a consumer sees change incompatibly in contracts/io.json and tokens.json.

Each `Break` names the spec key paths that can cause it, so a change is classed
`BREAKING_CONTRACT` only when it is one of those causes; `unified` is the text diff shown
for a changed contract file.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.review.tree import SETS, Change, overlaps


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
