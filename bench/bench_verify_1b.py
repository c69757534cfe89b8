"""Convert and verify a ~1B-parameter package on this machine: time and peak RSS per stage.

    .venv/bin/python bench/bench_verify_1b.py                 # every stage, in order
    .venv/bin/python bench/bench_verify_1b.py --from verify   # reuse the checkpoint, exports and package
    .venv/bin/python bench/bench_verify_1b.py --work DIR      # where the artifacts go (default /tmp/bench-1b)

The student: the toy spec with a ~1.1B architecture (d_model 2048, 16 layers, 32 heads / 8 KV heads,
d_head 64, SwiGLU 8192, vocab 32768, untied: 1,107,345,408 parameters), prefill [128, 512, 2048],
decode with a 2048-token cache, the toy's quantization recipe (int8 per channel, int4 per block of
32 in the MLPs, fp16 embeddings) and fp16 compute with the toy's fp32 islands. Random weights with
the plan's fake quantization baked in (as QAT leaves them), so the package's weights are exactly
representable and parity measures the conversion, not the random draw.

Each stage runs the real job (`runtime.jobs.<kind>.run`) with the compiled plan's own params, in a
fresh process: `checkpoint`, one `export-*` per function, `convert`, `verify`, then the parity jobs
the plan holds (`export.parity` left at its defaults: the smallest prefill length and decode).
Per stage: wall seconds and the process's peak RSS (`VmHWM`, read by the process itself at exit,
so file-backed pages it touched count too). Goal (issue 16): verify + parity under 10 minutes and
12 GiB. Writes bench/results/verify_1b.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "architecture.vocab_size=32768", "architecture.d_model=2048", "architecture.n_layers=16",
    "architecture.n_heads=32", "architecture.n_kv_heads=8", "architecture.d_head=64",
    "architecture.mlp.hidden=8192", "architecture.max_context=2048",
    "shapes.prefill[0]=128", "shapes.prefill[1]=512", "shapes.prefill[2]=2048", "shapes.decode.cache_len=2048",
    "training.curriculum[0].seq_len=128", "training.curriculum[1].seq_len=512", "tokenizer.source.vocab_size=512",
    "export.parity.lengths=smallest", "export.parity.positions=64",  # the defaults (the toy widens them)
    "gates[11].value=1024",  # package.size_mb: the toy's 2 MB bar is no bar for a 1B package
]
GiB = 1024 ** 3


def compiled():
    from compiler.output.build import compile_one

    return compile_one(str(ROOT / "specs" / "toy.yaml"), OVERRIDES)


def _ctx(work: Path, job: str, upstream: list[str] = ()):
    """A job context with provenance shaped like the executor's (the package stamps the fingerprints)."""
    from runtime.context import JobContext

    provenance = {"spec": {"name": "toy-worker", "version": "1.0.0", "hash": "bench-1b"},
                  "job": {"id": job, "kind": job.split("-")[0], "fingerprint": f"fp-{job}", "key": f"key-{job}"},
                  "upstream": {u: {"fingerprint": f"fp-{u}", "key": f"key-{u}"} for u in upstream}}
    return JobContext(job_id=job, spec_dir=ROOT / "specs", work_dir=work, cache_dir=None,
                      provenance=provenance, force=False, emit=lambda event: None)


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def stage(name: str, work: Path) -> dict:
    """Run one stage in this process; returns what it measured."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    plan = compiled()
    t0 = time.perf_counter()
    extra: dict = {}
    if name == "checkpoint":
        from runtime.model.checkpoint import save_student
        from runtime.model.fakequant import attach_fake_quant, remove_fake_quant
        from runtime.model.student import Student

        params = plan.job("qat").job.params
        with torch.no_grad():
            model = Student(params.training.architecture, seed=0)
            g = torch.Generator().manual_seed(7)
            for _, p in model.named_parameters():
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if p.ndim == 1 else 0.02 * torch.randn(p.shape, generator=g))
            attach_fake_quant(model, params.quantization)
            remove_fake_quant(model, bake=True)
        extra["parameters"] = sum(p.numel() for p in model.parameters())
        save_student(work / "checkpoint", model.state_dict(), model.arch, step=1, quantized=True, provenance={"bench": True})
    elif name.startswith("export-"):
        from runtime.jobs import export

        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        export.run(plan.job(name).job.params, {"qat": {"checkpoint": work / "checkpoint"}}, out, _ctx(work, name))
    elif name == "convert":
        from runtime.jobs import convert

        inputs = {j: {"program": work / j / "program.pt2", "report": work / j / "report.json"}
                  for j in plan.job("convert").job.needs if j.startswith("export-")}
        tok = work / "tokenizer"
        tok.mkdir(exist_ok=True)
        (tok / "tokenizer.json").write_text('{"stand-in": "the bench converts no tokenizer"}\n', encoding="utf-8")
        inputs["tokenizer"] = {"tokenizer": tok}
        out = work / "convert"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        convert.run(plan.job("convert").job.params, inputs, out, _ctx(work, "convert", list(inputs)))
        package = out / f"{plan.job('convert').job.params.name}.mlpackage"
        extra["package_mb"] = round(sum(p.stat().st_size for p in package.rglob("*") if p.is_file()) / 2 ** 20, 1)
    elif name == "verify":
        from runtime.verify.gate import verify

        params = plan.job("verify").job.params
        report = verify(params, work / "convert" / f"{params.name}.mlpackage", spec_hash="bench-1b", tokenizer=None,
                        convert_fingerprint="fp-convert", doc=None)
        extra["mismatches"] = [m.get("message", m) if isinstance(m, dict) else m for m in report["mismatches"]][:10]
    elif name.startswith("parity-"):
        from runtime.jobs import parity

        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        params = plan.job(name).job.params
        name_pkg = plan.job("convert").job.params.name
        result = parity.run(params, {"convert": {"package": work / "convert" / f"{name_pkg}.mlpackage"},
                                     "qat": {"checkpoint": work / "checkpoint"}}, out, _ctx(work, name))
        extra["metrics"] = {k: v for k, v in result.items() if not k.startswith("_")}
        extra["verdict"] = result["_verdict"]
        extra["golden_mb"] = round((out / "golden.npz").stat().st_size / 2 ** 20, 2)
    else:
        raise SystemExit(f"unknown stage {name!r}")
    return {"stage": name, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(_hwm() / GiB, 2), **extra}


def stages() -> list[str]:
    plan = compiled()
    exports = [j for j in plan.job("convert").job.needs if j.startswith("export-")]
    parities = [j.job.id for j in plan.jobs if j.job.kind == "parity"] if hasattr(plan, "jobs") else []
    if not parities:
        parities = [d["id"] for d in plan.plan["jobs"] if d["kind"] == "parity"]
    return ["checkpoint", *exports, "convert", "verify", *parities]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-1b"))
    ap.add_argument("--from", dest="start", default=None, help="first stage to run (earlier artifacts are reused)")
    ap.add_argument("--only", default=None, help="run just this stage")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verify_1b.json")
    args = ap.parse_args()
    if args.stage:
        print("RESULT " + json.dumps(stage(args.stage, args.work)), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    order = stages()
    if args.only:
        order = [args.only]
    elif args.start:
        order = order[order.index(args.start):]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = {r["stage"]: r for r in previous.get("stages", [])}
    for name in order:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--stage", name, "--work", str(args.work)], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
        if proc.returncode or result is None:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"stage {name} failed (exit {proc.returncode}) after {time.perf_counter() - t0:.0f} s")
        result["process_seconds"] = round(time.perf_counter() - t0, 1)
        rows[name] = result
        print(json.dumps(result), flush=True)
        write(args.out, rows)  # after every stage: a later failure keeps what was measured


def write(out: Path, rows: dict) -> None:
    ordered = [rows[s] for s in stages() if s in rows]
    verify_stages = [r for r in ordered if r["stage"] == "verify" or r["stage"].startswith("parity-")]
    summary = {
        "verify_and_parity_seconds": round(sum(r["process_seconds"] for r in verify_stages), 1),
        "verify_and_parity_peak_rss_gib": max((r["peak_rss_gib"] for r in verify_stages), default=None),
        "goal": "verify + parity under 600 s and 12 GiB (issue 16)",
    }
    out.write_text(json.dumps({
        "benchmark": "bench/bench_verify_1b.py", "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "overrides": OVERRIDES, "stages": ordered, "summary": summary,
    }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
