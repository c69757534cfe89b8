"""Human-facing files (README.md, graph.mmd) rendered through jinja2 from `templates/`.

Templates stay dumb: every value is computed here and passed as a plain string or number;
`StrictUndefined` turns a missing value into an error. User strings are passed as data,
never compiled as templates, and Markdown-escaped where they land in tables.
"""

from __future__ import annotations

from compiler.planning.compile import Compiled
from compiler.planning.jobs import WHY
from compiler.output.text import environment, human_bytes, human_count, md

def _mermaid_id(job_id: str) -> str:
    return job_id.replace("-", "_")


def _pairs(c: Compiled) -> list[str]:
    """The README's lines on the drafter-worker pair (compiler/reading/pairing.py checked it)."""
    import os

    from compiler.reading.pairing import drafters_of, worker_path
    from compiler.reading.validate import load_spec

    s = c.spec
    if s.drafts_for is not None:
        worker = load_spec(worker_path(os.path.dirname(os.path.abspath(c.validated.path)), s.drafts_for))
        return [f"drafts for: `{md(worker.name)}` {md(worker.version)} (`{md(s.drafts_for)}`); the compiler checked that "
                "they share tokenizer source, special tokens, vocabulary and chat template, and that this context "
                f"({s.architecture.max_context}) fits the worker's ({worker.architecture.max_context})"]
    return [f"drafted for by: `{md(name)}` (`{md(file)}`, its `drafts_for`; the compiler checks the pair there)"
            for name, file in drafters_of(s, c.validated.path)]


def render_files(c: Compiled) -> dict[str, str]:
    from compiler.output.training_report import training_context

    s, d = c.spec, c.derived
    a = s.architecture
    env = environment()
    jobs = [
        {"id": j.id, "mid": _mermaid_id(j.id), "kind": j.job.kind, "needs": ", ".join(j.job.needs) or "-",
         "fingerprint": j.fingerprint[:12], "why": WHY[j.job.kind]}
        for j in c.jobs
    ]
    edges = [{"src": _mermaid_id(u), "dst": _mermaid_id(v)} for u, v in sorted((n, j.id) for j in c.jobs for n in j.job.needs)]
    profiles = []
    for p in s.deployment.profiles:
        need = d.profile_bytes(p)
        profiles.append({"name": p.name, "memory": f"{p.memory_gb:g} GiB", "sessions": p.sessions, "context": p.context,
                         "kv": human_bytes(p.sessions * p.context * d.kv_bytes_per_token), "total": human_bytes(need),
                         "headroom": human_bytes(p.memory_gb * (1 << 30) - need)})
    gates = [{"metric": g.metric, "op": f"`{g.op}`", "value": f"{g.value:g}", "policy": g.policy,
              "min_n": g.min_n if g.min_n is not None else "-"} for g in s.gates]
    arch_rows = [("vocab_size", a.vocab_size), ("d_model", a.d_model), ("n_layers", a.n_layers), ("n_heads", a.n_heads),
                 ("n_kv_heads", a.n_kv_heads), ("d_head", a.d_head), ("mlp.hidden", a.mlp.hidden),
                 ("max_context", a.max_context), ("tie_embeddings", str(a.tie_embeddings).lower())]
    context = {
        "name": s.name, "version": s.version, "role": s.role, "description": md(s.description),
        "spec_path": c.spec_path, "spec_hash": c.spec_hash[:16],
        "arch": [{"key": k, "value": v} for k, v in arch_rows],
        "params": human_count(d.params), "params_exact": f"{d.params:,}",
        "weight_bytes": human_bytes(d.weight_bytes), "dense_bytes": human_bytes(d.dense_fp16_bytes),
        "kv_per_token": human_bytes(d.kv_bytes_per_token),
        "training_tokens": human_count(d.training_tokens), "training_flops": f"{d.training_flops:.3g}",
        "profiles": profiles, "jobs": jobs, "edges": edges, "gates": gates,
        "prefill": ", ".join(str(t) for t in s.shapes.prefill),
        "training": training_context(c),
        "pairs": _pairs(c),
    }
    return {
        "README.md": env.get_template("README.md.j2").render(context),
        "graph.mmd": env.get_template("graph.mmd.j2").render(context),
    }
