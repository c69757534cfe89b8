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

The lockstep generation itself is runtime/jobs/eval_generation.py. A judge (the spec has a ``judge`` section) is evaluated by runtime/jobs/eval_judge.py instead. A model with
a halt head also gets its metrics, teacher-forced over the same rows (runtime/jobs/eval_halt.py).

Outputs: ``out/report.json`` (metrics as ``{"value", "n"}``, per-kind breakdowns, stop
reasons, provenance; everything but ``seconds`` is deterministic) and ``out/samples.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from compiler.schema.tokenizer import EVAL_MARKERS
from runtime.model.checkpoint import load_student, read_record

from .eval_generation import (  # noqa: F401  (Request, Generation, check_against_forward: public here too)
    EvalJobError, Generation, Request, check_against_forward, generate, one_thread,
)
from .eval_metrics import Markers, Reference, aggregate, score_sample
from .tokenizer import load_tokenizer, special_token_mismatch, write_report

MARKERS = EVAL_MARKERS  # the validator requires them for every role
# The batches' memory on a CPU when the spec gives no device memory (training.resources.memory_gb).
EVAL_CPU_BUDGET_MB = 4096


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

