"""`modelspec export-hf SPEC --to DIR`: the trained student as a Hugging Face folder.

It reads the store without the user knowing its layout: the student is the checkpoint of the
plan's qat job (or train, without QAT; `--from train` picks the KD checkpoint), the tokenizer the
tokenizer job's folder, both for the spec as it is now. Exit 0 written, 2 bad input (nothing
built yet, DIR exists), 1 never (there is no check to fail). The folder is written next to DIR
and renamed into place, so DIR never holds a partial export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from compiler.cli.app import JsonOpt, SetOpt, _arg_problem, _emit_json, app
from compiler.core.errors import SpecError

from runtime.cli.common import WorkdirOpt, _plan


def _output(plan, store, keys, job_id: str, output: str, spec: str) -> Path:
    k = keys[job_id]
    record = store.record(k.kind, k.key)
    if record is None or output not in record.get("outputs", {}):
        raise SpecError([_arg_problem("SPEC", f"the {job_id} job of {spec} has not run with this spec and store",
                                      f"run it first: modelspec run {spec} --until {job_id}")])
    return store.job_dir(k.kind, k.key) / record["outputs"][output]["path"]


@app.command("export-hf")
def export_hf(
    spec: Annotated[str, typer.Argument(help="Spec file.")],
    to: Annotated[str, typer.Option("--to", help="Folder to create (must not exist).")],
    from_: Annotated[Optional[str], typer.Option("--from", help="Checkpoint job: qat (default when the plan has it) or train.")] = None,
    max_shard_gb: Annotated[float, typer.Option("--max-shard-gb", help="Shard the weights above this size (GB).")] = 5.0,
    workdir: WorkdirOpt = ".modelspec",
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write the trained student as a Hugging Face folder (config, weights, tokenizer) that loads with AutoModelForCausalLM."""
    from runtime.keys import job_keys
    from runtime.store import Store

    dest = Path(to)
    if dest.exists():
        raise SpecError([_arg_problem("--to", f"{to} already exists", "name a new folder; nothing was written")])
    if max_shard_gb <= 0:
        raise SpecError([_arg_problem("--max-shard-gb", f"{max_shard_gb:g} is not positive", None)])
    if not Path(workdir).is_dir():
        raise SpecError([_arg_problem("--workdir", f"no store at {workdir}", f"run the pipeline first: modelspec run {spec}")])
    plan = _plan(spec, set_ or [], True, workdir)
    ids = [j.id for j in plan.jobs]
    job = from_ or ("qat" if "qat" in ids else "train")
    if job not in ("qat", "train") or job not in ids:
        raise SpecError([_arg_problem("--from", f"no checkpoint job '{job}' in {spec}", "qat or train (qat only when the spec enables QAT)")])
    store = Store(workdir)
    keys = job_keys(plan)
    checkpoint = _output(plan, store, keys, job, "checkpoint", spec)
    tokenizer = _output(plan, store, keys, "tokenizer", "tokenizer", spec)
    special = {name: tok["id"] for name, tok in plan.job("tokenizer").params["special_tokens"].items()}

    from runtime.model.hf_export import write_hf_folder

    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        facts = write_hf_folder(checkpoint, tokenizer, scratch / "out", special, max_shard_bytes=int(max_shard_gb * 1e9))
        os.rename(scratch / "out", dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    facts |= {"folder": str(dest), "checkpoint_job": job}
    if json_:
        _emit_json({"ok": True, **facts})
    else:
        typer.echo(f"wrote {dest}/ ({facts['model_type']}, {facts['parameters']:,} parameters, "
                   f"{len(facts['weights'])} weight file{'s' if len(facts['weights']) != 1 else ''}) from the {job} checkpoint")
        typer.echo(f"  load it: AutoModelForCausalLM.from_pretrained({json.dumps(str(dest))}), AutoTokenizer.from_pretrained(...)")
