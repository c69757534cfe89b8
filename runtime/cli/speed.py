"""`modelspec bench-device`: measure a package's speed on this device and write a speed report.

The report (runtime/speed/report.py, docs/speed.md) is bound to the package's canonical hash, the
deployment profile and the device; by default it is written to ``speed/<name>/`` beside the spec,
where the gates job reads it. Exit 0 when the report was written, 2 on invalid input (a bad spec,
no package, an unknown profile, no tokenizer, CoreML asked for off macOS).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from compiler.cli.app import SetOpt, app

from runtime.cli.common import WorkdirOpt, fail_input as _fail, package_arg, require_runtime


def _eval_rows(spec_file: Path, value: str, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """The spec's eval split (local, or a URI fetched into the store) and its sha256."""
    from runtime.hashing import file_sha256
    from runtime.remote import RemoteInputError, fetch, is_uri

    try:
        path = fetch(value, None, workdir / "remote") if is_uri(value) else \
            (Path(value) if Path(value).is_absolute() else spec_file.parent / value)
    except RemoteInputError as exc:
        _fail(f"data.eval: {exc}")
    if not path.is_file():
        _fail(f"data.eval {value!r} not found (looked at {path})")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("prompt"), str)], file_sha256(path)


def prompt_slice(rows: list[dict[str, Any]], tok: Any, bos: int, count: int, fits: Any) -> tuple[list[list[int]], list[str], int]:
    """The first `count` eval prompts, in file order, that fit a prefill shape with room to decode."""
    prompts, ids, skipped = [], [], 0
    for row in rows:
        if len(prompts) == count:
            break
        tokens = [bos] + tok.encode(row["prompt"], add_special_tokens=False)
        if fits(len(tokens)):
            prompts.append(tokens)
            ids.append(str(row.get("id", len(ids))))
        else:
            skipped += 1
    return prompts, ids, skipped


def default_out(spec_file: Path, name: str, profile: str, chip: str, package_hash: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", chip.lower()).strip("-") or "device"
    return spec_file.parent / "speed" / name / f"{profile}--{slug}--{package_hash[:12]}.json"


def write_atomic(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, sort_keys=True, indent=2) + "\n")
    os.replace(tmp, path)


@app.command("bench-device")
def bench_device(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    package: Annotated[str, typer.Argument(help="The .mlpackage to measure.")],
    profile: Annotated[Optional[str], typer.Option("--profile", help="Deployment profile measured (default: the spec's first).")] = None,
    prompts: Annotated[int, typer.Option("--prompts", min=1, help="Eval prompts measured (the first that fit, in file order).")] = 50,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Greedy tokens per prompt, at most.")] = 64,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Prompts run first and not counted.")] = 2,
    backend: Annotated[str, typer.Option("--backend", help="coreml (macOS), or interpreter (the reference interpreter: exercises the harness anywhere; its report is refused by speed gates).")] = "coreml",
    out: Annotated[Optional[str], typer.Option("--out", help="Report file (default: speed/<name>/<profile>--<chip>--<hash12>.json beside the spec).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer folder (default: the release's tokenizer/, else found in the store).")] = None,
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
) -> None:
    """Measure TTFT per prefill shape, decode tokens/s and first-tool-call latency into a speed report."""
    require_runtime("bench-device")
    from compiler.output.build import compile_one
    from compiler.planning.params import VerifyParams

    from runtime.speed.backends import BACKENDS, BackendError
    from runtime.speed.harness import Shapes, Stops, measure
    from runtime.speed.report import FORMAT, MEASURED, profile_record

    pkg = package_arg(package)
    if backend not in BACKENDS:
        _fail(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    compiled = compile_one(spec, set_ or [])  # SpecError -> exit 2 with file:line:col
    sp = compiled.spec
    profiles = {p.name: p for p in sp.deployment.profiles}
    prof = profiles.get(profile or sp.deployment.profiles[0].name)
    if prof is None:
        _fail(f"--profile {profile!r}: the spec's profiles are {', '.join(profiles)}")
    params = VerifyParams.model_validate(compiled.job("verify").job.params.model_dump(mode="json"))
    decode = sp.shapes.decode.enabled
    shapes = Shapes({n: f.name for f in params.functions if f.role == "prefill" for n in f.seq_lens},
                    sp.shapes.decode.cache_len if decode else 0, sp.tokenizer.special_tokens["pad"].id)
    special = sp.tokenizer.special_tokens
    stops = Stops(special["eos"].id, getattr(special.get("tool_call_start"), "id", None),
                  getattr(special.get("tool_call_end"), "id", None))

    from runtime.coreml.package import canonical_hash
    from runtime.jobs.tokenizer import TokenizerJobError, load_tokenizer
    from runtime.release import release_of

    tok_dir = Path(tokenizer) if tokenizer else None
    if tok_dir is None:
        rel = release_of(pkg)
        tok_dir = rel / "tokenizer" if rel is not None else _store_tokenizer(pkg, Path(workdir), compiled)
    if tok_dir is None:
        _fail("no tokenizer: the package is not in a release folder and its fingerprints match no tokenizer in the "
              f"store ({workdir}); pass --tokenizer DIR")
    try:
        tok = load_tokenizer(tok_dir)
    except TokenizerJobError as exc:
        _fail(str(exc))
    rows, eval_sha = _eval_rows(Path(spec), sp.data.eval, Path(workdir))
    context = min(prof.context, shapes.cache_len)
    fits = lambda n: shapes.for_prompt(n) is not None and (not decode or n + max_new_tokens <= context)  # noqa: E731
    slice_, ids, skipped = prompt_slice(rows, tok, special["bos"].id, prompts + warmup, fits)
    if len(slice_) <= warmup:
        _fail(f"only {len(slice_)} eval prompts fit a prefill shape with {max_new_tokens} tokens to decode "
              f"within {context} tokens; lower --max-new-tokens or --warmup")
    package_hash = canonical_hash(pkg)
    names = sorted({*shapes.prefill.values(), *(["decode"] if decode else [])})
    try:
        runner = BACKENDS[backend](pkg, names, sp.export.coreml.compute_units,
                                   sp.export.coreml.decode_cache if decode else None, shapes.cache_len)
    except BackendError as exc:
        _fail(str(exc))
    device = {"backend": runner.name, "compute_units": runner.compute_units, **runner.device()}
    typer.echo(f"measuring {len(slice_) - warmup} prompts (+{warmup} warmup) on {device['chip']} with {runner.name}", err=True)
    warm, measured = slice_[:warmup], slice_[warmup:]
    try:
        metrics, _ = measure(runner, measured, shapes, stops, max_new_tokens=max_new_tokens, warmup=warm)
    finally:
        runner.close()
    report = {
        "format": FORMAT,
        "spec": {"name": sp.name, "version": sp.version, "hash": compiled.spec_hash},
        "package": {"canonical_hash": package_hash, "name": pkg.name},
        "profile": profile_record(prof),
        "device": device,
        "prompts": {"source": sp.data.eval, "sha256": eval_sha, "ids": ids[warmup:], "n": len(measured),
                    "skipped": skipped, "max_new_tokens": max_new_tokens, "warmup": warmup},
        "load_s": runner.load_s,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
    }
    dest = Path(out) if out else default_out(Path(spec), sp.name, prof.name, device["chip"], package_hash)
    write_atomic(dest, report)
    for name in MEASURED:
        m = metrics[name]
        typer.echo(f"  speed.{name}: " + (f"{m['value']:.4g} (n={m['n']})" if "value" in m else m["not_run"]), err=True)
    if runner.name != "coreml":
        typer.echo("note: measured with the reference interpreter, not a device: speed gates refuse this report", err=True)
    typer.echo(f"wrote {dest}", err=True)


def _store_tokenizer(pkg: Path, workdir: Path, compiled: Any) -> Path | None:
    from runtime.cli.gate import references
    from runtime.keys import job_keys
    from runtime.plan import Plan

    return references(pkg, workdir, job_keys(Plan.from_compiled(compiled)))["tokenizer"]
