"""Render `modelspec diff` reports: text for terminals, markdown for a PR comment, json."""

from __future__ import annotations

import json
from typing import Any

ABSENT = "(absent)"


def value(v: Any, width: int = 60) -> str:
    if v is None:
        return ABSENT
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 3] + "..."


def number(v: Any) -> str:
    if v is None:
        return ABSENT
    if isinstance(v, float) and (abs(v) >= 1e6 or (v and abs(v) < 1e-3)):
        return f"{v:.4g}"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".")
    return f"{v:,}" if isinstance(v, int) else str(v)


def signed(v: Any) -> str:
    if v is None:
        return ""
    if v == 0:
        return "0"
    return ("+" if v > 0 else "-") + number(abs(v))


def derived_rows(derived: dict) -> list[tuple[str, str, str, str]]:
    """(quantity, old, new, delta) for every derived value that changed."""
    rows = []
    for key, d in derived.items():
        if key == "profiles":
            for name, p in d.items():
                for field, label in (("total_bytes", "memory"), ("headroom_bytes", "headroom")):
                    q = p[field]
                    if q["old"] != q["new"]:
                        rows.append((f"profile {name} {label} (bytes)", number(q["old"]), number(q["new"]), signed(q["delta"])))
            continue
        if d["old"] != d["new"]:
            rows.append((key.replace("_", " "), number(d["old"]), number(d["new"]), signed(d["delta"])))
    return rows


def _head(r: dict) -> str:
    o, n = r["old"], r["new"]
    ver = f"{o['version']} -> {n['version']}" if o["version"] != n["version"] else o["version"]
    return f"{n['name']} ({ver}): {o['source']} -> {n['source']}"


def text(r: dict) -> str:
    lines = [_head(r), f"class: {r['class']}"]
    if not r["changes"]:
        lines.append("no semantic change (comments, key order and formatting are not changes)")
    else:
        lines.append(f"changes ({len(r['changes'])}):")
        width = max(len(c["class"]) for c in r["changes"])
        for c in r["changes"]:
            what = f"{value(c['old'])} -> {value(c['new'])}" if c["kind"] != "reordered" else "reordered"
            jobs = f"  [{', '.join(c['jobs'])}]" if c["jobs"] else ""
            lines.append(f"  {c['class']:<{width}}  {c['path']}: {what}{jobs}")
            for b in c.get("breaking", []):
                lines.append(f"  {'':<{width}}    breaks: {b}")
    j = r["jobs"]
    lines.append(f"jobs: {len(j['invalidated'])} invalidated, {len(j['cached'])} cached, "
                 f"{len(j['added'])} added, {len(j['removed'])} removed")
    for key in ("invalidated", "added", "removed", "cached"):
        if j[key]:
            lines.append(f"  {key}: {', '.join(j[key])}")
    if j["unattributed_kinds"]:
        lines.append(f"  changed by no listed change (READS gap): {', '.join(j['unattributed_kinds'])}")
    ct = r["contracts"]
    lines.append("contracts: " + (", ".join(ct["changed"]) + " changed" if ct["changed"] else "unchanged"))
    for b in ct["breaking"]:
        lines.append(f"  BREAKING {b['file']}: {b['what']}")
    rows = derived_rows(r["derived"])
    if rows:
        lines.append("derived:")
        w = max(len(q) for q, *_ in rows)
        for q, a, b, d in rows:
            lines.append(f"  {q:<{w}}  {a} -> {b} ({d})")
    for diff in ct["changed"].values():
        lines.append(diff.rstrip("\n"))
    for e in r["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines) + "\n"


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(r: dict) -> str:
    o, n = r["old"], r["new"]
    out = [f"### `modelspec diff` {n['name']}: **{r['class']}**", "",
           f"`{o['source']}` ({o['version']}) → `{n['source']}` ({n['version']})", ""]
    for e in r["errors"]:
        out += [f"> **Error:** {e}", ""]
    if r["changes"]:
        out += ["| class | path | old | new | invalidates |", "|---|---|---|---|---|"]
        for c in r["changes"]:
            old, new = ("(order)", "reordered") if c["kind"] == "reordered" else (value(c["old"], 40), value(c["new"], 40))
            note = ", ".join(c["jobs"]) + ("; breaks: " + "; ".join(c["breaking"]) if c.get("breaking") else "")
            out.append(f"| {c['class']} | `{_cell(c['path'])}` | `{_cell(old)}` | `{_cell(new)}` | {_cell(note)} |")
    else:
        out.append("No semantic change (comments, key order and formatting are not changes).")
    j = r["jobs"]
    out += ["", f"**Jobs:** {len(j['invalidated'])} invalidated, {len(j['cached'])} cached, "
            f"{len(j['added'])} added, {len(j['removed'])} removed", "",
            "<details><summary>Jobs</summary>", "", "| job | status |", "|---|---|"]
    for key in ("invalidated", "added", "removed", "cached"):
        out += [f"| `{job}` | {key} |" for job in j[key]]
    out += ["", "</details>", ""]
    rows = derived_rows(r["derived"])
    if rows:
        out += ["| derived | old | new | delta |", "|---|---|---|---|"]
        out += [f"| {q} | {a} | {b} | {d} |" for q, a, b, d in rows]
        out.append("")
    ct = r["contracts"]
    for b in ct["breaking"]:
        out.append(f"- **breaking** `{b['file']}`: {b['what']}")
    if ct["breaking"]:
        out.append("")
    for name, diff in ct["changed"].items():
        out += [f"<details><summary><code>{name}</code></summary>", "", "```diff", diff.rstrip("\n"), "```", "", "</details>", ""]
    return "\n".join(out)


def render(reports: list[dict], fmt: str, *, multi: bool, new_specs: list[str] = (), removed_specs: list[str] = (),
           top: str = "COSMETIC") -> str:
    if fmt == "json":
        if not multi:
            return json.dumps(reports[0], indent=2) + "\n"
        return json.dumps({"class": top, "specs": reports, "new_specs": list(new_specs),
                           "removed_specs": list(removed_specs)}, indent=2) + "\n"
    one = text if fmt == "text" else markdown
    parts = [one(r) for r in reports]
    if multi and not reports:
        parts.append("no spec changed\n")
    for path in new_specs:
        parts.append(f"new spec (not in the base): {path}\n")
    for path in removed_specs:
        parts.append(f"removed spec (only in the base): {path}\n")
    return ("\n" if fmt == "text" else "\n---\n\n").join(parts)
