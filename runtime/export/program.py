"""Export one contract function with torch.export and describe the program's signature.

The description (names, dtypes, shapes, symbolic ranges of user inputs, user outputs and
mutated buffers) is what the contract check compares and what the export report lists; it is
computed from the saved-and-reloaded program, so it describes the artifact, not the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from compiler.planning.params import FunctionP, TensorP

from .wrappers import torch_dtype

DTYPE_NAMES = {torch.float16: "fp16", torch.float32: "fp32", torch.int32: "int32", torch.int64: "int64",
               torch.bfloat16: "bf16", torch.bool: "bool"}


def _symbolic_dim(fn: FunctionP, t: TensorP) -> tuple[int, list[int]] | None:
    """(axis, allowed sizes) of a tensor's one symbolic dimension, from its enumerated shapes."""
    axes = [i for i, d in enumerate(t.shape) if isinstance(d, str)]
    if not axes:
        return None
    if len(axes) > 1 or not t.enumerated_shapes:
        raise ValueError(f"function {fn.name!r}: input {t.name!r} shape {t.shape} needs exactly one symbolic dimension "
                         "with enumerated shapes")
    axis = axes[0]
    return axis, sorted({s[axis] for s in t.enumerated_shapes})


def example_inputs(fn: FunctionP, seq_len: int, vocab_size: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs shaped as the contract (symbolic length -> seq_len); non-trivial values on purpose:
    a random cache and a middle position, so a program that ignored them could not pass checks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in fn.inputs:
        shape = [seq_len if isinstance(d, str) else d for d in t.shape]
        if t.name == "input_ids":
            out.append(torch.randint(0, vocab_size, shape, generator=g, dtype=torch.int64).to(torch.int32))
        elif t.name == "position":
            out.append(torch.full(shape, max(1, fn_cache_len(fn) // 2), dtype=torch_dtype(t.dtype)))
        else:
            out.append(torch.randn(shape, generator=g).mul(0.5).to(torch_dtype(t.dtype)))
    return tuple(out)


def fn_cache_len(fn: FunctionP) -> int:
    """The cache length the contract implies (states or explicit cache inputs), else 0."""
    for t in (*fn.states, *fn.inputs):
        if t.name == "key_cache":
            return int(t.shape[3])
    return 0


def dynamic_shapes(fn: FunctionP) -> dict[str, Any] | None:
    spec: dict[str, Any] = {}
    dynamic = False
    for t in fn.inputs:
        sym = _symbolic_dim(fn, t)
        if sym is None:
            spec[t.name] = None
            continue
        axis, sizes = sym
        if sizes[0] == sizes[-1]:  # one enumerated length: nothing varies (torch.export needs min < max)
            spec[t.name] = None
            continue
        name = str(t.shape[axis])
        spec[t.name] = {axis: Dim(name, min=sizes[0], max=sizes[-1])}
        dynamic = True
    return spec if dynamic else None


def export_function(module: nn.Module, fn: FunctionP, vocab_size: int) -> ExportedProgram:
    """torch.export (non-strict) of a wrapper, a symbolic length exported over its enumerated range.

    `run_decompositions({})` turns the training IR (in-place `index_put_` on buffers) into the
    functional ATen dialect in which cache writes are buffer mutations: what coremltools reads
    as states. It decomposes nothing else."""
    args = example_inputs(fn, min(fn.seq_lens), vocab_size)
    with torch.no_grad():
        ep = torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes(fn), strict=False)
        return ep.run_decompositions({})


def save_and_reload(ep: ExportedProgram, path: Path) -> ExportedProgram:
    _stable_provenance(ep)
    torch.export.save(ep, str(path))
    return torch.export.load(str(path))


def _stable_provenance(ep: ExportedProgram) -> None:
    """Make the saved program byte-identical across processes.

    Each node's provenance (`meta["from_node"]`) names the graphs it came from by `id(graph)`, a
    memory address, and the archive's serialization id is derived from the records' contents:
    graph ids renumbered in order of first appearance make the whole .pt2 deterministic (a
    killed export that reruns writes exactly the bytes of an uninterrupted one)."""
    numbers: dict[int, int] = {}
    seen: set[int] = set()  # a source shared by several nodes is renumbered once

    def renumber(source) -> None:
        if id(source) in seen:
            return
        seen.add(id(source))
        info = getattr(source, "node_info", None)
        if info is not None:
            info.graph_id = numbers.setdefault(info.graph_id, len(numbers))
        source._dict = None  # to_dict() caches the old ids
        for parent in getattr(source, "from_node", ()):
            renumber(parent)

    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            for source in node.meta.get("from_node") or ():
                renumber(source)


def _val(node: torch.fx.Node) -> Tensor:
    val = node.meta.get("val")
    if not isinstance(val, Tensor):
        raise ValueError(f"program node {node.name!r} has no tensor metadata")
    return val


def _tensor_desc(name: str, val: Tensor, ranges: dict[str, list[int]]) -> dict[str, Any]:
    shape: list[int | str] = []
    for d in val.shape:
        shape.append(int(d) if str(d).lstrip("-").isdigit() else str(d))
    desc: dict[str, Any] = {"name": name, "dtype": DTYPE_NAMES.get(val.dtype, str(val.dtype)), "shape": shape}
    sym = {str(d): ranges[str(d)] for d in shape if isinstance(d, str) and str(d) in ranges}
    if sym:
        desc["ranges"] = sym
    return desc


def _ranges(ep: ExportedProgram) -> dict[str, list[int]]:
    return {str(s): [int(r.lower), int(r.upper)] for s, r in ep.range_constraints.items()}


def describe(ep: ExportedProgram) -> dict[str, Any]:
    """{"inputs", "outputs", "states", "constant_buffers"} of a program, in signature order."""
    sig = ep.graph_signature
    nodes = {n.name: n for n in ep.graph.nodes}
    ranges = _ranges(ep)
    buffers = dict(ep.named_buffers())
    mutated = set(sig.buffers_to_mutate.values())
    inputs, constant_buffers = [], []
    for spec in sig.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(_tensor_desc(spec.arg.name, _val(nodes[spec.arg.name]), ranges))
        elif spec.kind == InputKind.BUFFER and spec.target not in mutated:
            constant_buffers.append(spec.target)
    outputs, states = [], []
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    for spec, arg in zip(sig.output_specs, output_node.args[0]):
        if spec.kind == OutputKind.USER_OUTPUT:
            outputs.append(_tensor_desc(spec.arg.name, _val(arg), ranges))
        elif spec.kind == OutputKind.BUFFER_MUTATION:
            states.append(_tensor_desc(spec.target, buffers[spec.target], ranges))
        else:
            outputs.append({"name": spec.arg.name, "kind": str(spec.kind)})
    return {"inputs": inputs, "outputs": outputs, "states": sorted(states, key=lambda s: s["name"]),
            "constant_buffers": sorted(constant_buffers)}
