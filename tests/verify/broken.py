"""Constructors for the broken-package battery (test_broken_packages.py): a reduced toy spec, a good
package built by the real jobs, and packages broken on purpose, each in one realistic way.

The reduced spec is specs/toy.yaml with one prefill length (64) plus decode, so a package has two
functions and converts in seconds; its data paths point back at specs/data so it validates from
any folder. Packages are built with the spec's real hash in their provenance, so `verify` and the
`modelspec verify` CLI take them as this spec's packages.

Three ways to break a package:
  - edit a copy of the good package's Model protobuf (`edited_copy`): renamed inputs, dropped
    enumerated shapes, metadata, swapped weight blobs;
  - convert the good exports with changed convert params (`convert`): a different quantization
    entry, an island module dropped;
  - export a broken torch function (`export_unchecked`) and convert it: the export job's torch
    checks would refuse these (that is the point of them), so the program is exported directly
    and given an export report that says only what is true of it: its signature is the
    contract's (checked here); its torch checks were not run.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from compiler.planning.compile import Compiled
from tests.runtime.helpers import SPECS, Ctx
from tests.runtime.toy_exports import save_checkpoint

TOY = SPECS / "toy.yaml"
EDITS_SMALL = {  # exact text of specs/toy.yaml -> the reduced spec's
    "prefill: [64, 128, 256]": "prefill: [64]",
    "cache_len: 256, verify_k: 4}": "cache_len: 256}",  # no verify function: tests/runtime/test_verify_function.py
    "{until_step: 400, seq_len: 128}": "{until_step: 400, seq_len: 64}",  # training shapes must be exported ones
}
EDITS_ENUMERATED = {
    "prefill: [64, 128, 256]": "prefill: [64, 128]",
    "cache_len: 256, verify_k: 4}": "cache_len: 256}",
    "packaging: multifunction": "packaging: enumerated",
}


def write_spec_variant(folder: Path, name: str, edits: dict[str, str]) -> Path:
    """specs/toy.yaml with `edits` applied (each must match exactly once) and absolute data paths."""
    text = TOY.read_text(encoding="utf-8")
    for old, new in edits.items():
        if text.count(old) != 1:
            raise AssertionError(f"specs/toy.yaml no longer contains {old!r} exactly once; update tests/verify/broken.py")
        text = text.replace(old, new)
    text = text.replace(" data/toy/", f" {SPECS / 'data' / 'toy'}/")
    path = Path(folder) / name
    path.write_text(text, encoding="utf-8")
    return path


def provenance(compiled: Compiled, job: str) -> dict[str, Any]:
    spec = compiled.spec
    return {"spec": {"name": spec.name, "version": spec.version, "hash": compiled.spec_hash},
            "job": {"id": job, "kind": job.split("-")[0], "fingerprint": f"fp-{job}", "key": f"key-{job}"},
            "upstream": {"qat": {"fingerprint": "fp-qat", "key": "key-qat"}}}


@contextmanager
def once(root: Path, name: str) -> Iterator[bool]:
    """Build `root/name` once per session, across pytest-xdist workers too: yields True when the
    caller must build it (under an exclusive lock), False when it is already there."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / f".{name}.done"
        build = not done.exists()
        if build and (root / name).exists():
            shutil.rmtree(root / name)  # a build that died half way
        yield build
        if build:
            done.write_text("ok\n")


def export_jobs(compiled: Compiled) -> dict[str, str]:
    """function name -> export job id."""
    out = {}
    for job_id in compiled.job("convert").job.needs:
        if job_id.startswith("export-"):
            out[compiled.job(job_id).job.params.function.name] = job_id
    return out


def export_checked(compiled: Compiled, job_id: str, checkpoint: Path, out: Path) -> dict[str, Path]:
    """The real export job (contract and torch checks)."""
    from runtime.jobs import export

    out.mkdir(parents=True, exist_ok=True)
    export.run(compiled.job(job_id).job.params, {"qat": {"checkpoint": checkpoint}}, out,
               Ctx(work_dir=out.parent, provenance=provenance(compiled, job_id)))
    return {"program": out / "program.pt2", "report": out / "report.json"}


def export_unchecked(compiled: Compiled, job_id: str, checkpoint: Path, out: Path,
                     wrapper: Callable[[Any, Any, Any], Any] | None = None) -> dict[str, Path]:
    """torch.export of `wrapper(student, fn, decode_cache)` (default: the real `wrap`) without the
    export job's torch checks; the report's contract result is real, its `checks` list is empty."""
    from runtime.export.contract import check_contract
    from runtime.export.program import describe, export_function, save_and_reload
    from runtime.export.wrappers import wrap
    from runtime.model.checkpoint import load_student

    params = compiled.job(job_id).job.params
    fn = params.function
    student = load_student(checkpoint, params.architecture).float().eval()
    module = (wrapper or wrap)(student, fn, params.decode_cache)
    out.mkdir(parents=True, exist_ok=True)
    program = save_and_reload(export_function(module, fn, params.architecture.vocab_size), out / "program.pt2")
    problems = check_contract(describe(program), fn)
    if problems:
        raise AssertionError(f"the broken export of {fn.name!r} does not even match its contract: {problems}")
    report = {"function": fn.name, "role": fn.role, "contract": {"passed": True, "problems": []}, "checks": [],
              "note": "exported by tests/verify/broken.py without the export job's torch checks",
              "provenance": provenance(compiled, job_id)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return {"program": out / "program.pt2", "report": out / "report.json"}


def tokenizer_folder(root: Path) -> Path:
    """A stand-in tokenizer folder: the package stamps its fingerprint, verify recomputes it."""
    folder = root / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text('{"stand-in": "tokenizer for the fingerprint"}\n', encoding="utf-8")
    return folder


def convert(compiled: Compiled, exports: dict[str, dict[str, Path]], tokenizer: Path, out: Path,
            params: Any = None) -> Path:
    """The real convert job over `exports` (export job id -> outputs); `params` replaces the plan's."""
    from runtime.jobs import convert as convert_job

    params = params or compiled.job("convert").job.params
    inputs: dict[str, dict[str, Path]] = {**exports, "tokenizer": {"tokenizer": tokenizer}}
    prov = provenance(compiled, "convert")
    prov["upstream"] = {job: {"fingerprint": f"fp-{job}", "key": f"key-{job}"} for job in inputs} | prov["upstream"]
    out.mkdir(parents=True, exist_ok=True)
    convert_job.run(params, inputs, out, Ctx(work_dir=out.parent, provenance=prov))
    return out / f"{params.name}.mlpackage"


def edited_copy(package: Path, dest: Path, edit: Callable[[Any], None]) -> Path:
    """A copy of `package` under `dest` whose Model protobuf `edit(spec)` changed in place."""
    from runtime.coreml.package import load_spec, write_spec

    copy = Path(shutil.copytree(package, Path(dest) / package.name))
    spec = load_spec(copy)
    edit(spec)
    write_spec(copy, spec)
    return copy


def _blocks(block: Any) -> Iterator[Any]:
    yield block
    for op in block.operations:
        for inner in op.blocks:
            yield from _blocks(inner)


def _described(spec: Any, function: str, name: str) -> list[Any]:
    """The description features of input `name` of `function`: the function's own, plus the
    top-level one when the package describes its default function there too."""
    fn_desc = next(f for f in spec.description.functions if f.name == function)
    (own,) = [f for f in fn_desc.input if f.name == name]
    top = [f for f in spec.description.input if f.name == name] if spec.description.defaultFunctionName == function else []
    return [own, *top]


def rename_input(spec: Any, function: str, old: str, new: str) -> None:
    """Rename a function input consistently: its description, the MIL function's inputs and every
    op argument that reads it (the default function's top-level description too)."""
    for feature in _described(spec, function, old):
        feature.name = new
    fn = spec.mlProgram.functions[function]
    (inp,) = [i for i in fn.inputs if i.name == old]
    inp.name = new
    uses = 0
    for block in _blocks(fn.block_specializations[fn.opset]):
        for op in block.operations:
            for arg in op.inputs.values():
                for binding in arg.arguments:
                    if binding.name == old:
                        binding.name, uses = new, uses + 1
    if not uses:
        raise AssertionError(f"no op of {function!r} reads {old!r}")


def drop_enumerated_shape(spec: Any, function: str, input_name: str, shape: list[int]) -> None:
    """Delete one enumerated shape of an input (function description and top-level description)."""
    for feature in _described(spec, function, input_name):
        shapes = feature.type.multiArrayType.enumeratedShapes.shapes
        (index,) = [i for i, s in enumerate(shapes) if list(s.shape) == shape]
        del shapes[index]


def set_metadata(spec: Any, key: str, value: str | None) -> None:
    user = spec.description.metadata.userDefined
    if value is None:
        del user[key]
    else:
        user[key] = value


def swap_weight_blobs(spec: Any, a: str, b: str) -> int:
    """Make the dequantizing ops of weights `a` and `b` (const names, e.g. from observe) read each
    other's blobs (data, scale, offset) in every function; returns how many ops were edited."""
    edited = 0
    for fn in spec.mlProgram.functions.values():
        ops = {op.outputs[0].name: op for block in _blocks(fn.block_specializations[fn.opset])
               for op in block.operations if op.type.startswith("constexpr_") and op.outputs}
        if a not in ops or b not in ops:
            continue
        for key in ops[a].inputs:
            va, vb = ops[a].inputs[key].arguments[0].value, ops[b].inputs[key].arguments[0].value
            if va.WhichOneof("value") == "blobFileValue":
                fa, fb = va.blobFileValue, vb.blobFileValue
                (fa.fileName, fa.offset), (fb.fileName, fb.offset) = (fb.fileName, fb.offset), (fa.fileName, fa.offset)
        edited += 2
    return edited


def checkpoint(compiled: Compiled, folder: Path) -> Path:
    return save_checkpoint(compiled, folder)


# --- broken torch functions (exported with `export_unchecked`) ---------------------------------

def all_allowed(q_pos: Any, k_pos: Any, key_mask: Any = None) -> Any:
    """`allowed_mask` with the bug of a mask that lets every position see every other."""
    import torch

    from runtime.model.student import allowed_mask

    allowed = allowed_mask(q_pos, k_pos, key_mask)
    return torch.logical_or(allowed, torch.logical_not(allowed))


def cacheless_decode(student: Any, fn: Any, decode_cache: Any) -> Any:
    """A state decode that writes its cache but attends only to the current token."""
    import torch

    from runtime.export.wrappers import StateDecode
    from runtime.model.student import allowed_mask

    class CachelessDecode(StateDecode):
        def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
            cache_len = self.key_cache.shape[3]
            k_pos = torch.arange(cache_len, device=input_ids.device)
            q_pos = position.reshape(1, 1).to(k_pos.dtype)
            hit = (k_pos == q_pos.reshape(1)).view(1, 1, cache_len, 1)

            def writer(i: int) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
                def write(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    self.key_cache[i] = torch.where(hit, k, self.key_cache[i])
                    self.value_cache[i] = torch.where(hit, v, self.value_cache[i])
                    return k, v  # the bug: the fresh k/v only, the cache is never read back
                return write

            logits = self.model.run_layers(input_ids, q_pos, allowed_mask(q_pos, q_pos),
                                     [writer(i) for i in range(len(self.model.layers))])
            return logits.to(self.logits_dtype)

    return CachelessDecode(student, fn)


ADDITIVE_MASK = -1.0e9  # finite in fp32, -inf in fp16


def additive_mask_attention(self: Any, x: Any, cos: Any, sin: Any, allowed: Any, kv_fn: Any, sdpa: bool = False) -> Any:
    """`Attention.forward` with an additive mask `(1 - allowed) * full_like(scores, -1e9)` instead of
    a replacement: exact in fp32; in the fp16 package the filled -1e9 is cast to fp16 (-inf) before
    the multiply, so every allowed position gets 0 * -inf = NaN.

    With a scalar `* -1e9` coremltools keeps that one multiply in fp32 (its constant does not fit
    fp16) and only the cast after it overflows: masked positions become -inf, which softmax absorbs;
    parity then still reports the inf intermediates, but no NaN appears."""
    import torch
    import torch.nn.functional as F

    from runtime.model.student import _apply_rope

    b, t, _ = x.shape
    q = self.q_proj(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
    k = self.k_proj(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
    v = self.v_proj(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    k, v = kv_fn(k, v)
    k, v = k.to(q.dtype), v.to(q.dtype)
    rep = self.n_heads // self.n_kv_heads
    s = k.shape[2]
    k = k[:, :, None].expand(b, self.n_kv_heads, rep, s, self.d_head).reshape(b, self.n_heads, s, self.d_head)
    v = v[:, :, None].expand(b, self.n_kv_heads, rep, s, self.d_head).reshape(b, self.n_heads, s, self.d_head)
    scores = torch.matmul(q, k.transpose(2, 3)) * (self.d_head ** -0.5)
    scores = scores + (1.0 - allowed.to(scores.dtype)) * torch.full_like(scores, ADDITIVE_MASK)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.n_heads * self.d_head)
    return self.o_proj(out)
