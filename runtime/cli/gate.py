"""`modelspec verify` and `modelspec publish`: the contract gate from the command line.

verify exits 0 when the package is the model the spec describes, 1 when a check failed, 2 when
the input is invalid (a bad spec, no package, no checkpoint to compare with). A package that
failed a check exits 1 whatever else could not run: with no checkpoint for parity, it says that
parity did not run and still exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from compiler.cli.app import SetOpt, app
from compiler.core.errors import CheckFailed

from runtime.cli.common import WorkdirOpt, _plan, fail_input as _fail_input, package_arg, require_runtime


def find_output(store_root: Path, kinds: tuple[str, ...], fingerprint: str | None, output: str,
                prefer_key: str | None = None) -> Path | None:
    """The named output of a completed job with this fingerprint in the store, if any.

    A fingerprint covers a job's params, not its input files' content, so several completed jobs
    can share one (the corpus changed): the key the current plan computes wins, else the newest."""
    if not fingerprint:
        return None
    found: list[tuple[bool, float, Path]] = []
    for kind in kinds:
        for record in (store_root / "jobs" / kind).glob("*/_complete.json"):
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("fingerprint") == fingerprint and output in data.get("outputs", {}):
                found.append((data.get("key") == prefer_key, record.stat().st_mtime, record.parent / data["outputs"][output]["path"]))
    return max(found)[2] if found else None


def references(package: Path, store_root: Path, keys: dict[str, Any]) -> dict[str, Any]:
    from runtime.coreml.package import load_spec

    meta = dict(load_spec(package).description.metadata.userDefined)
    try:
        fps = json.loads(meta.get("modelspec.fingerprints", "{}"))
    except ValueError:
        fps = {}
    student = "qat" if "qat" in fps else "train"
    return {"checkpoint": find_output(store_root, ("qat", "train"), fps.get(student), "checkpoint",
                                      getattr(keys.get(student), "key", None)),
            "tokenizer": find_output(store_root, ("tokenizer",), fps.get("tokenizer"), "tokenizer",
                                     getattr(keys.get("tokenizer"), "key", None))}


@app.command()
def verify(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    package: Annotated[str, typer.Argument(help="The .mlpackage to check.")],
    json_report: Annotated[Optional[str], typer.Option("--json", help="Write the full report (JSON) to this file.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Reference checkpoint for parity (default: found in the store through the package's fingerprints).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer folder to fingerprint (default: found in the store).")] = None,
    parity: Annotated[bool, typer.Option("--parity/--no-parity", help="Also execute the package with the reference interpreter.")] = True,
    release: Annotated[Optional[str], typer.Option("--release", help="Release folder of the package (default: the package's folder when it holds manifest.json and tokenizer/): its tokenizer must be the package's.")] = None,
    speed_report: Annotated[Optional[str], typer.Option("--speed-report", help="A speed report from `modelspec bench-device` (docs/speed.md): it must measure this package on one of the spec's profiles; the spec's speed gates are evaluated on it.")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="An earlier speed report (another package, same chip and profile) for the regression gates.")] = None,
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
) -> None:
    """Check a package against the spec's contracts and, with a checkpoint, its numeric parity."""
    require_runtime("verify")
    from compiler.output.build import compile_one
    from compiler.reading.loader import load_file
    from compiler.planning.params import ParityParams, VerifyParams

    pkg = package_arg(package)
    compiled = compile_one(spec, set_ or [])  # SpecError -> exit 2 with file:line:col
    params = VerifyParams.model_validate(compiled.job("verify").job.params.model_dump(mode="json"))
    from runtime.keys import job_keys
    from runtime.plan import Plan

    refs = references(pkg, Path(workdir), job_keys(Plan.from_compiled(compiled)))
    from runtime.release import release_checks, release_of

    rel = Path(release) if release else release_of(pkg)
    if release and not (rel / "manifest.json").is_file():
        _fail_input(f"{release} is not a release folder (no manifest.json)")
    tok = Path(tokenizer) if tokenizer else (rel / "tokenizer" if rel and (rel / "tokenizer").is_dir() else refs["tokenizer"])
    from runtime.verify.gate import summary_lines, verify as run_verify

    speed_rows = _speed_gates(compiled.spec, pkg, speed_report, baseline) if speed_report else None
    if baseline and not speed_report:
        _fail_input("--baseline compares with a --speed-report; pass both")
    report = run_verify(params, pkg, spec_hash=compiled.spec_hash, tokenizer=tok,
                        convert_fingerprint=compiled.job("convert").fingerprint, doc=load_file(spec))
    report["parity"] = {}
    failed = not report["passed"]
    if speed_rows is not None:
        report["speed"] = {"report": speed_report, "baseline": baseline, "gates": speed_rows}
        for g in speed_rows:
            failed = failed or (g["policy"] == "hard" and g["outcome"] != "pass")
            value = "-" if g["value"] is None else f"{g['value']:.4g}"
            typer.echo(f"[speed] gate {g['metric']} {g['op']} {g['threshold']:g}: {value} {g['outcome']}"
                       + (f" ({g['reason']})" if g["reason"] else ""), err=True)
    for line in summary_lines(report):
        typer.echo(line, err=True)
    if rel is not None:  # the release's tokenizer is the package's, its files the manifest's
        report["release"] = {"folder": str(rel), "checks": release_checks(rel, pkg)}
        for c in report["release"]["checks"]:
            failed = failed or not c["passed"]
            typer.echo(f"[release] {c['name']}: {'ok' if c['passed'] else 'FAIL'}: {c['message']}", err=True)
    ckpt = (Path(checkpoint) if checkpoint else refs["checkpoint"]) if parity else None
    if parity and (ckpt is None or not ckpt.exists()):
        missing = ("no reference checkpoint: the package's fingerprints match no checkpoint in the store "
                   f"({workdir}); pass --checkpoint DIR or --no-parity")
        if not failed:
            _fail_input(missing)
        # the package already failed a check: that is the verdict (exit 1), parity could not add to it
        typer.echo(f"parity not run: {missing}", err=True)
        report["parity_not_run"] = missing
    elif parity:
        from runtime.verify.parity import measure

        gates = {g.metric: g for g in compiled.spec.gates if g.metric.startswith("parity.")}
        for pj in compiled.jobs:
            if pj.job.kind != "parity":
                continue
            pp = ParityParams.model_validate(pj.job.params.model_dump(mode="json"))
            if pp.function.name not in report["observed"]["functions"]:
                continue
            rep, _ = measure(pkg, pp.function, ckpt, samples=pp.samples, decode_steps=pp.decode_steps, seed=pp.seed,
                             lengths=pp.lengths or None, positions=pp.positions)
            rep["gates"] = _parity_gates(rep, gates)
            report["parity"][pp.function.name] = rep
            for c in rep["checks"]:
                if not c["passed"]:
                    failed = True
                    typer.echo(f"[parity {pp.function.name}] {c['name']}: {c['message']}", err=True)
            for g in rep["gates"]:
                if g["outcome"] == "fail":
                    failed = failed or g["policy"] == "hard"
                    typer.echo(f"[parity {pp.function.name}] gate {g['metric']} {g['op']} {g['threshold']:g}: {g['value']:.4g}", err=True)
    report["passed"] = not failed
    if json_report:
        Path(json_report).write_text(json.dumps(report, sort_keys=True, indent=2, default=float) + "\n", encoding="utf-8")
    typer.echo(f"{'PASS' if not failed else 'FAIL'}: {pkg.name} against {spec}", err=True)
    if failed:
        raise typer.Exit(1)


def _speed_gates(spec: Any, pkg: Path, path: str, baseline_path: str | None) -> list[dict[str, Any]]:
    """The spec's speed gates on one speed report (and a baseline); a report that does not measure
    this package on a profile of this spec with its compute units is refused (exit 2)."""
    from compiler.analysis.catalogue import CATALOGUE
    from compiler.planning.params import GateP
    from runtime.coreml.package import canonical_hash
    from runtime.jobs.gates import evaluate
    from runtime.speed import report as speed

    binding = speed.Binding(canonical_hash(pkg), {p.name: speed.profile_values(p) for p in spec.deployment.profiles},
                            spec.export.coreml.compute_units)
    try:
        rep = speed.load(Path(path))
        base = speed.load(Path(baseline_path)) if baseline_path else None
    except speed.SpeedReportError as exc:
        _fail_input(str(exc))
    why = speed.refusal(rep, binding)
    if why:
        _fail_input(f"speed report {path} refused: {why}")
    if base is not None:
        why = speed.refusal(base, binding, as_baseline=True) or (
            None if (base["device"]["chip"], base["profile"]["name"]) == (rep["device"]["chip"], rep["profile"]["name"])
            else f"it measured {base['device']['chip']} / {base['profile']['name']}, the report "
                 f"{rep['device']['chip']} / {rep['profile']['name']}")
        if why:
            _fail_input(f"baseline {baseline_path} refused: {why}")
    rows = []
    for g in spec.gates:
        if CATALOGUE[g.metric].producer != "speed":
            continue
        gp = GateP(metric=g.metric, op=g.op, value=g.value, policy=g.policy, min_n=g.min_n, kind="", producer="speed")
        rows.append(evaluate(gp, {}, speed.metric(g.metric.split(".", 1)[1], rep, base)))
    return rows


def _parity_gates(report: dict[str, Any], gates: dict[str, Any]) -> list[dict[str, Any]]:
    from compiler.planning.params import GateP
    from runtime.jobs.gates import evaluate

    rows = []
    for metric, g in sorted(gates.items()):
        gp = GateP(metric=g.metric, op=g.op, value=g.value, policy=g.policy, min_n=None, kind="", producer="parity")
        rows.append(evaluate(gp, {"parity": report}))
    return rows


@app.command()
def publish(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    to: Annotated[str, typer.Option("--to", help="Release folder: DIR/releases/<release>/ and the DIR/current symlink.")],
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
) -> None:
    """Publish the package whose hard gates all passed: atomic copy plus a manifest."""
    require_runtime("publish")
    from runtime.executor import Executor, select
    from runtime.jobs.publish import release_files
    from runtime.keys import job_states
    from runtime.progress import Reporter
    from runtime.release import ReleaseError, install
    from runtime.store import Store

    plan = _plan(spec, set_ or [], False, workdir)
    store = Store(workdir)
    with store.lock():
        needed = set(select(plan, ["publish"], [])) - {"publish"}
        behind = [s.id for s in job_states(plan, store) if s.id in needed and s.state != "up_to_date"]
        if behind:
            raise CheckFailed(f"not up to date: {', '.join(behind)}; run `modelspec run {spec}` first")
        with Reporter(quiet=True) as reporter:
            executor = Executor(plan, store, reporter=reporter)
            results = {r.id: r for r in executor.run(select(plan, ["publish"], []))}
    pub = results.get("publish")
    if pub is None or pub.action not in ("ran", "cached"):
        typer.echo(f"publish refused: {(pub.error if pub else None) or 'the publish job did not complete'}", err=True)
        raise typer.Exit(1)
    inputs = {dep: {k: Path(v) for k, v in results[dep].outputs.items()} for dep in plan.job("publish").needs}
    inputs |= {j: {k: Path(v) for k, v in results[j].outputs.items()} for j in results if j.startswith("parity")}
    inputs["publish"] = {k: Path(v) for k, v in pub.outputs.items()}  # its app files (runtime_config.json, ...)
    try:
        final = install(Path(to), Path(pub.outputs["manifest"]), release_files(inputs))
    except ReleaseError as exc:
        typer.echo(f"publish refused: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"published {final} ({Path(to) / 'current'} -> {final.name})", err=True)
