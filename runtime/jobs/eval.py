"""The eval job: greedy generation on the eval split with the KV cache, scored by `eval_metrics`.

Inputs: the student checkpoint (the one input with a ``checkpoint`` output: ``qat`` or
``train``), ``inputs["dataset"]["data"]`` (``eval.safetensors`` + ``eval.jsonl``) and the
tokenizer folder. The protocol and the metric definitions are in docs/metrics.md.

Per sample: the prompt is ``[bos] + tokens(prompt)``, read from the dataset's own tensors (so
exactly the dataset job's encoding); greedy decoding until eos or the tool-call end token; after
a tool call the sample's reference tool result (the text between the result markers of its
target) is fed as ``<tool_result>...</tool_result>`` and greedy decoding continues until eos.
At most ``max_total_tokens`` tokens in total, which is also the cache length.

Samples run in lockstep batches over a shared position: one ``prefill`` of the shortest prompt's
length (logits of its last position only), then one ``decode`` per position in which each row
feeds either its next forced token (the rest of its prompt, an injected tool result) or its own
greedy choice. Rows leave the batch when they stop. Batches are consecutive samples whose KV
caches (``max_total_tokens`` positions each) and prefill fit the memory budget (``memory_budget_mb``
from ``training.resources.memory_gb`` less the weights; 4 GiB on a CPU without one); a budget too
small for one sample is an error that says so. The job runs on the training device (cuda when
the spec trains there, in bf16 when it trains in bf16). Every row's tokens depend on that row
alone, so the batching does not change what is generated. Before anything is scored, the cached path is checked against
full ``forward`` recomputation (see `check_against_forward`).

A judge (the spec has a ``judge`` section) is evaluated by runtime/jobs/eval_judge.py instead. A model with
a halt head also gets its metrics, teacher-forced over the same rows (runtime/jobs/eval_halt.py).

Outputs: ``out/report.json`` (metrics as ``{"value", "n"}``, per-kind breakdowns, stop
reasons, provenance; everything but ``seconds`` is deterministic) and ``out/samples.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from compiler.schema.tokenizer import EVAL_MARKERS
from runtime.model.checkpoint import load_student, read_record

from .eval_metrics import Markers, Reference, aggregate, score_sample
from .tokenizer import load_tokenizer, special_token_mismatch, write_report

MARKERS = EVAL_MARKERS  # the validator requires them for every role
# The batches' memory on a CPU when the spec gives no device memory (training.resources.memory_gb).
EVAL_CPU_BUDGET_MB = 4096
# A cache/forward argmax disagreement is a tie, not a bug, when the two logits are this close.
TIE_TOLERANCE = 1e-4


class EvalJobError(RuntimeError):
    """Inputs the eval job cannot work with (missing tokens or files, mismatched ids, a broken cache path)."""


@dataclass
class Request:
    prompt: list[int]  # [bos] + prompt tokens
    tool_result: list[int] | None  # fed after a generated tool call; None: the sample has no result to feed


@dataclass
class Generation:
    tokens: list[int]  # prompt + everything after it (generated and injected), stop token included
    prompt_len: int
    generated: list[int] = field(default_factory=list)  # positions whose token the model chose
    injected: tuple[int, int] | None = None  # [start, end) positions of the injected tool result
    stop: str = ""  # eos | tool_call_end | max_total_tokens


@dataclass
class _Row:
    gen: Generation
    forced: deque
    result: list[int] | None
    in_answer: bool = False


def _step_row(row: _Row, pos: int, greedy: int, eos: int, call_end: int, max_total: int) -> bool:
    """Write the token at `pos` for one row; True while the row needs its next token."""
    gen = row.gen
    if row.forced:
        gen.tokens.append(row.forced.popleft())
    else:
        gen.tokens.append(greedy)
        gen.generated.append(pos)
        if greedy == eos:
            gen.stop = "eos"
            return False
        if greedy == call_end:
            if row.in_answer or row.result is None:
                gen.stop = "tool_call_end"
                return False
            if len(gen.tokens) + len(row.result) >= max_total:  # no room for the result and one answer token
                gen.stop = "max_total_tokens"
                return False
            gen.injected = (len(gen.tokens), len(gen.tokens) + len(row.result))
            row.forced.extend(row.result)
            row.in_answer = True
    if len(gen.tokens) >= max_total:
        gen.stop = "max_total_tokens"
        return False
    return True


def row_bytes(arch, max_total: int, prompt_len: int, element: int) -> int:
    """What one row of a batch needs: its KV cache for `max_total` positions, and the prefill's largest
    transient (one layer's activations over its prompt, fp32) plus its last position's logits."""
    cache = 2 * arch.n_layers * arch.n_kv_heads * arch.d_head * max_total * element
    prefill = prompt_len * (6 * arch.d_model + 3 * arch.mlp_hidden + 2 * arch.n_heads * arch.d_head) * 4
    return cache + prefill + 2 * arch.vocab_size * 4


def batches(requests: list[Request], active: list[int], need: Callable[[int], int], budget: int | None) -> list[list[int]]:
    """Consecutive requests packed into batches whose rows' needs fit `budget` bytes (None: one batch)."""
    if budget is None:
        return [active] if active else []
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in active:
        n = need(i)
        if n > budget:
            raise EvalJobError(
                f"the eval memory budget ({budget / 2**20:.0f} MiB) is too small for one sample: sample {i} needs "
                f"{n / 2**20:.1f} MiB (a KV cache of max_total_tokens positions and its prefill); raise "
                "training.resources.memory_gb, or lower architecture.max_context")
        if current and used + n > budget:
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        out.append(current)
    return out


@torch.inference_mode()
def generate(model, requests: list[Request], max_total: int, eos: int, call_end: int,
             done: Callable[[int], None] = lambda i: None, budget: int | None = None,
             stats: dict[str, int] | None = None) -> list[Generation]:
    """Greedy generation for every request, in lockstep batches whose KV caches and prefill fit `budget`
    bytes (None: all in one batch; see the module docstring)."""
    rows = [_Row(Generation(tokens=[], prompt_len=len(r.prompt)), deque(r.prompt), r.tool_result) for r in requests]
    active = []
    for i, (row, req) in enumerate(zip(rows, requests)):
        if not req.prompt:
            raise EvalJobError(f"request {i} has an empty prompt (it needs at least bos)")
        if len(req.prompt) >= max_total:
            row.gen.tokens.extend(req.prompt)
            row.gen.stop = "max_total_tokens"
            done(i)
        else:
            active.append(i)
    embed = getattr(model, "embed_tokens", None)  # the student (a test double may stand in)
    element = embed.weight.element_size() if embed is not None else 4
    planned = batches(requests, active, lambda i: row_bytes(model.arch, max_total, len(requests[i].prompt), element), budget)
    for batch in planned:
        _generate_batch(model, rows, requests, batch, max_total, eos, call_end, done)
    if stats is not None:
        stats["batches"] = len(planned)
        stats["largest_batch"] = max((len(b) for b in planned), default=0)
    return [r.gen for r in rows]


def _device(model) -> torch.device:
    """Where the student's weights are (a test double standing in for it runs on the CPU)."""
    embed = getattr(model, "embed_tokens", None)
    return embed.weight.device if embed is not None else torch.device("cpu")


def _generate_batch(model, rows: list[_Row], requests: list[Request], active: list[int], max_total: int, eos: int,
                    call_end: int, done: Callable[[int], None]) -> None:
    device = _device(model)
    m = min(len(requests[i].prompt) for i in active)
    for i in active:
        for _ in range(m):
            rows[i].gen.tokens.append(rows[i].forced.popleft())
    k_cache, v_cache = model.empty_cache(len(active), max_total)
    ids = torch.tensor([rows[i].gen.tokens for i in active], dtype=torch.long, device=device)
    logits, k_cache, v_cache = model.prefill(ids, k_cache, v_cache, last_only=True)
    pos = m
    while active:
        greedy = logits[:, -1].argmax(-1).tolist()
        keep, feed = [], []
        for b, i in enumerate(active):
            if _step_row(rows[i], pos, greedy[b], eos, call_end, max_total):
                keep.append(b)
                feed.append(rows[i].gen.tokens[-1])
            else:
                done(i)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            k_cache, v_cache = k_cache.index_select(1, index), v_cache.index_select(1, index)
            active = [active[b] for b in keep]
        logits, k_cache, v_cache = model.decode(torch.tensor(feed, dtype=torch.long, device=device)[:, None],
                                                torch.tensor([pos], dtype=torch.long, device=device), k_cache, v_cache)
        pos += 1


@torch.inference_mode()
def check_against_forward(model, gen: Generation, label: str) -> dict[str, int]:
    """Each token the cached path chose must be the argmax of full `forward` over the same prefix.

    One causal forward over the finished sequence gives every prefix's logits at once, so this is
    greedy decoding by full recomputation, step by step. A disagreement within `TIE_TOLERANCE`
    (relative to the logit scale) is a tie broken differently by rounding and is counted."""
    if not gen.generated:
        return {"positions": 0, "ties": 0}
    logits = model(torch.tensor([gen.tokens], dtype=torch.long, device=_device(model)))[0].float()
    wants = logits.argmax(-1).tolist()
    ties = 0
    for pos in gen.generated:
        want, got = wants[pos - 1], gen.tokens[pos]
        if want == got:
            continue
        row = logits[pos - 1]
        gap = float(row[want] - row[got])
        if gap > TIE_TOLERANCE * max(1.0, float(row.abs().max())):
            raise EvalJobError(
                f"{label}: greedy decoding with the KV cache chose token {got} at position {pos}, but full forward "
                f"recomputation chooses {want} (logit gap {gap:.3g}): a bug in the cache path (prefill/decode)")
        ties += 1
    return {"positions": len(gen.generated), "ties": ties}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting (workers are long-lived).

    A decode step is one token per row of a small model: threads cost more in synchronisation
    than they save, and when other jobs share the cores their spin-waiting makes generation
    ten times slower. One thread also keeps greedy outputs independent of the core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _checkpoint_folder(inputs: dict[str, dict[str, Path]]) -> tuple[str, Path]:
    found = sorted((job, outs["checkpoint"]) for job, outs in inputs.items() if "checkpoint" in outs)
    if len(found) != 1:
        raise EvalJobError(f"the eval job needs exactly one input with a 'checkpoint' output, got {[j for j, _ in found]}")
    return found[0][0], Path(found[0][1])


def _markers(special: dict) -> Markers:
    missing = [m for m in ("bos", "eos") + MARKERS if m not in special]
    if missing:
        raise EvalJobError(f"the eval job needs the special tokens {missing}, which the spec does not declare")
    return Markers(**{m: special[m].text for m in MARKERS})


def _check_tokenizer(tok, special: dict) -> None:
    problem = special_token_mismatch(tok, special)
    if problem:
        raise EvalJobError(problem)


def _reference_result(target: str, markers: Markers) -> str | None:
    """The tool result stated in a reference target, or None when it has none."""
    start = target.find(markers.tool_result_start)
    if start < 0:
        return None
    start += len(markers.tool_result_start)
    end = target.find(markers.tool_result_end, start)
    return None if end < 0 else target[start:end]


def _load_eval_split(data_dir: Path, special: dict) -> tuple[list[dict], Any]:
    from runtime.data.shards import RowSource, ShardError, has_split

    tensors, jsonl = data_dir / "eval", data_dir / "eval.jsonl"
    if not has_split(data_dir, "eval") or not jsonl.is_file():
        raise EvalJobError(f"dataset folder {data_dir} lacks the eval rows (eval.index.json) or eval.jsonl")
    try:
        source = RowSource(data_dir, "eval", rebuild="the dataset job")
    except ShardError as exc:
        raise EvalJobError(str(exc)) from None
    info = json.loads(source.metadata.get("modelspec", "{}"))
    input_ids = source.read_all("input_ids").numpy()
    for name in ("bos", "eos"):
        if info.get(f"{name}_id") != special[name].id:
            raise EvalJobError(f"{tensors}: the dataset's {name} id is {info.get(f'{name}_id')}, the spec's is {special[name].id}")
    meta = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(meta) != input_ids.shape[0]:
        raise EvalJobError(f"{data_dir}: {len(meta)} rows of metadata for {input_ids.shape[0]} rows of tokens")
    return meta, input_ids


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _requests(meta: list[dict], input_ids, tok, markers: Markers, bos: int) -> tuple[list[Request], list[Reference]]:
    requests, references = [], []
    for m in meta:
        prompt = [int(t) for t in input_ids[m["row"], :m["prompt_len"]]]
        if prompt[0] != bos:
            raise EvalJobError(f"eval sample {m['id']}: the prompt does not start with bos")
        result = _reference_result(m["target"], markers)
        fed = None
        if result is not None:
            fed = tok.encode(f"{markers.tool_result_start}{result}{markers.tool_result_end}", add_special_tokens=False)
        requests.append(Request(prompt, fed))
        references.append(Reference(kind=m["kind"], target=m["target"], tool_call=m["tool_call"],
                                    integration=tuple(m["integration"]), pii=tuple(m["pii"])))
    return requests, references


def _self_check(model, gens: list[Generation], ids: list[str], rows: list[int]) -> dict[str, Any]:
    report: dict[str, Any] = {"samples": [ids[i] for i in rows], "positions": 0, "ties": 0}
    for i in rows:
        for k, v in check_against_forward(model, gens[i], f"eval sample {ids[i]}").items():
            report[k] += v
    return report


def _metric_report(outcomes: list[dict], tokens: list[int]) -> dict[str, dict]:
    metrics = aggregate(outcomes)
    metrics["generated_tokens_mean"] = {"value": sum(tokens) / len(tokens) if tokens else None, "n": len(tokens)}
    return metrics


def run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx) -> dict:
    start = time.perf_counter()
    out = Path(out)
    special = params.special_tokens
    markers = _markers(special)
    eos, call_end = special["eos"].id, special["tool_call_end"].id
    max_total = params.max_total_tokens
    if max_total > params.architecture.max_context:
        raise EvalJobError(f"max_total_tokens {max_total} exceeds the model's max_context {params.architecture.max_context}")
    for key, name in (("dataset", "data"), ("tokenizer", "tokenizer")):
        if name not in inputs.get(key, {}):
            raise EvalJobError(f"the eval job needs inputs['{key}']['{name}']")
    student_job, ckpt = _checkpoint_folder(inputs)
    if params.judge_clauses is not None:  # verdicts from one prefill, not generation (docs/roles.md#judge)
        from .eval_judge import run as run_judge

        return run_judge(params, inputs, out, ctx, student_job, ckpt,
                         params.memory_budget_mb if params.memory_budget_mb is not None else EVAL_CPU_BUDGET_MB)
    tok = load_tokenizer(inputs["tokenizer"]["tokenizer"])
    _check_tokenizer(tok, special)
    meta, input_ids = _load_eval_split(Path(inputs["dataset"]["data"]), special)
    device = torch.device("cuda") if ctx.resources.get("device") == "cuda" and torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if params.dtype == "bf16" and device.type == "cuda" else torch.float32
    model = load_student(ckpt, arch=params.architecture).to(device=device, dtype=dtype)
    budget_mb = params.memory_budget_mb if params.memory_budget_mb is not None else EVAL_CPU_BUDGET_MB
    record = read_record(ckpt)

    requests, references = _requests(meta, input_ids, tok, markers, special["bos"].id)
    update = ctx.progress("eval: generating", total=len(meta))
    finished: list[int] = []

    def done(i: int) -> None:
        finished.append(i)
        update(1)

    with one_thread():
        shape: dict[str, int] = {}
        gens = generate(model, requests, max_total, eos, call_end, done, budget=budget_mb << 20, stats=shape)
        # The first sample, and the last to finish (it lived through every change of the batch).
        self_check = _self_check(model, gens, [m["id"] for m in meta], sorted({0, finished[-1]}) if finished else [])

    samples, outcomes, n_tokens = [], [], []
    for m, ref, gen in zip(meta, references, gens):
        samples.append(_sample_record(m, ref, gen, tok, markers))
        outcomes.append(samples[-1]["outcome"])
        n_tokens.append(len(gen.generated))

    metrics = _metric_report(outcomes, n_tokens)
    if params.halt_threshold is not None:  # the halt head, teacher-forced over the same rows (runtime/jobs/eval_halt.py)
        from .eval_halt import measure as measure_halt

        with one_thread():
            metrics.update(measure_halt(model, Path(inputs["dataset"]["data"]), {k: v.id for k, v in special.items()},
                                        params.halt_threshold, device, budget_mb))
    by_kind = {}
    for kind in sorted({m["kind"] for m in meta}):
        idx = [i for i, m in enumerate(meta) if m["kind"] == kind]
        of_kind = _metric_report([outcomes[i] for i in idx], [n_tokens[i] for i in idx])
        by_kind[kind] = {k: v for k, v in of_kind.items() if v["n"]}
    seconds = round(time.perf_counter() - start, 3)
    report = {
        "metrics": metrics,
        "by_kind": by_kind,
        "counts": {"samples": len(meta), "by_kind": dict(sorted(Counter(m["kind"] for m in meta).items()))},
        "stops": dict(sorted(Counter(g.stop for g in gens).items())),
        "protocol": {"decoding": "greedy", "max_total_tokens": max_total, "cache_len": max_total,
                     "tool_result": "reference", "self_check": self_check},
        "placement": {"device": device.type, "dtype": str(dtype).removeprefix("torch."), "memory_budget_mb": budget_mb,
                      **shape},
        "checkpoint": {"job": student_job, "step": record["step"], "quantized": record["quantized"]},
        "role": params.role,
        "provenance": ctx.provenance,
        "seconds": seconds,
    }
    write_report(out, report)
    with open(out / "samples.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for s in samples:
            fh.write(json.dumps(s, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    flat = {name: float(v["value"]) for name, v in metrics.items() if v["value"] is not None}
    flat["seconds"] = seconds
    return flat


def _sample_record(m: dict, ref: Reference, gen: Generation, tok, markers: Markers) -> dict:
    def text(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    end = len(gen.tokens) - (1 if gen.stop == "eos" else 0)
    after = gen.tokens[gen.prompt_len:end]
    generated = text(after)
    scored = score_sample(ref, generated, markers)
    if gen.injected is not None:
        a, b = gen.injected
        segments = {"before_result": text(gen.tokens[gen.prompt_len:a]), "tool_result": text(gen.tokens[a:b]),
                    "after_result": text(gen.tokens[b:end])}
    else:
        segments = {"before_result": generated, "tool_result": None, "after_result": None}
    return {"id": m["id"], "kind": m["kind"], "generated": generated, "segments": segments, "stop": gen.stop,
            "generated_tokens": len(gen.generated), "tool_call": scored["tool_call"],
            "tool_call_problem": scored["tool_call_problem"], "pii_leaked": scored["pii_leaked"],
            "outcome": scored["outcome"]}

