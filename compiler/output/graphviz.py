"""The job graph as text, mermaid or Graphviz dot."""

from __future__ import annotations

from compiler.planning.compile import Compiled
from compiler.output.render import render_files
from compiler.output.text import environment


def render_graph(c: Compiled, fmt: str) -> str:
    if fmt == "mermaid":
        return render_files(c)["graph.mmd"]
    if fmt == "dot":
        lines = ["digraph modelspec {", "  rankdir=TB;"]
        lines += [f'  "{j.id}" [label="{j.id}\\n({j.job.kind})"];' for j in c.jobs]
        lines += [f'  "{u}" -> "{v}";' for u, v in sorted(c.graph.edges)]
        return "\n".join(lines + ["}"]) + "\n"
    width = max(len(j.id) for j in c.jobs)
    rows = [f"{j.id:<{width}}  {j.job.kind:<9}  {j.fingerprint[:12]}  <- {', '.join(j.job.needs) or '-'}" for j in c.jobs]
    return "\n".join(rows) + "\n"


__all__ = ["render_graph", "environment"]
