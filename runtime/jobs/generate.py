"""The generate job: the teacher answers data.prompts; its transcripts become training rows.

Inputs: ``params.prompts`` (JSONL chat prompts, docs/chat_data.md), the tokenizer folder
``inputs["tokenizer"]["tokenizer"]`` (its chat template renders every conversation) and the
teacher's model folder ``inputs["teacher"]["model"]`` (kinds ``train`` and ``hf_local``).

1. Prompts are checked with ``runtime.data.chat_checks.validate_chat``; a sample that already ends
   with an assistant turn is not a prompt (``not_a_prompt``). Dropped prompts are counted by reason.
2. The engine (runtime/generation/engine.py) walks each prompt: the teacher
   (runtime/generation/local.py, batched in process) writes a turn; tool calls are answered from the
   prompt's fixtures for up to ``tool_rounds`` rounds; the final answer ends the transcript. Every
   answer is stored in the response cache under ``<cache>/responses`` keyed by the request, the
   teacher's weights hash and the tokenizer folder's hash (chat template included), so a killed job
   resumes without generating an answered turn again and a retrained teacher or a changed template
   misses the cache.
3. Transcripts are verified: dropped when a turn was cut at ``max_tokens`` (``max_tokens``), when
   call markup stayed in an answer's text (``unparsed_call``: the teacher wrote a call that is not
   JSON), and for every ``validate_chat`` reason (``pii_echoed``, ``schema_violation``, ...). The
   engine's reasons (``no_fixture``, ``too_many_rounds``) count too. The job fails when the share of
   valid prompts without a kept transcript exceeds ``max_failure_rate``, naming the reasons.
4. Kept transcripts are rendered with the chat template and tokenized (``runtime.data.chat.encode_chat``:
   loss on assistant turns; tool-name, argument and integration masks); a row longer than
   ``max_seq_len`` is dropped (``too_long``). The teacher's top-k logits over those rows are the KL
   targets, computed as the teacher job computes them.

Outputs: ``out/transcripts.jsonl`` (ready-made chat samples), ``out/data/train.safetensors`` and
``train.jsonl`` (the dataset job's row layout), ``out/targets/train.safetensors`` (the teacher job's
target layout) and ``out/report.json`` (counts, reasons, fixture hit rate, failure rate, tokens).
The train and QAT jobs append these rows to the dataset's train split. An HTTP teacher (`openai_compatible`) is
handled in generate_http.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from runtime.data.chat import ChatTemplate, ChatTemplateError, encode_chat
from runtime.data.chat_checks import is_ready_made, iter_calls, validate_chat
from runtime.data.rows import write_rows
from runtime.data.teacher_ids import encode_with_answers
from runtime.distributed.world import pick_device
from runtime.generation.budget import Budget, Prices
from runtime.generation.cache import ResponseCache
from runtime.generation.engine import Engine, Prompt, Settings
from runtime.generation.local import LocalTeacher, Markers
from runtime.generation.progress import PROGRESS_FILE, Progress
from runtime.generation.wire import parse_completion
from runtime.hashing import tree_sha256

from .generate_http import GenerateJobError, answer_tokens, run_http, write_logprobs, write_sparse_targets
from .teacher import check_vocab, load_hf_folder, write_targets
from .teacher_targets import weights_sha256
from .tokenizer import TokenizerJobError, load_tokenizer, resolve_path, write_report

def read_prompts(path: Path) -> tuple[list[dict], Counter, dict[str, list[str]]]:
    """The valid prompts, the drop counts by reason and up to 5 examples per reason."""
    kept, dropped, examples, seen = [], Counter(), {}, set()
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError:
                reason, detail = "bad_line", f"line {n} is not JSON"
            else:
                drop = validate_chat(sample, seen)
                if drop is None and is_ready_made(sample):
                    reason, detail = "not_a_prompt", f"{sample['id']}: ends with an assistant turn"
                elif drop is not None:
                    reason, detail = drop.reason, f"line {n}: {drop.detail}"
                else:
                    kept.append(sample)
                    continue
            dropped[reason] += 1
            bucket = examples.setdefault(reason, [])
            if len(bucket) < 5:
                bucket.append(detail[:200])
    return kept, dropped, examples


def _markup_left(messages: list[dict], markers: Markers) -> bool:
    return any(m.get("role") == "assistant" and isinstance(m.get("content"), str) and markers.call[0] in m["content"]
               for m in messages)


def run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx) -> dict:
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special = params.special_tokens
    try:
        tok_dir = Path(inputs["tokenizer"]["tokenizer"])
        tok = load_tokenizer(tok_dir)
    except (KeyError, TokenizerJobError) as exc:
        raise GenerateJobError(f"the generate job needs the tokenizer job's folder: {exc}") from exc
    try:
        template = ChatTemplate.from_tokenizer(tok, tools=[])
        template = ChatTemplate(template.source, name="the tokenizer's chat_template")
    except ChatTemplateError as exc:
        raise GenerateJobError(f"{exc}; set tokenizer.chat_template in the spec") from exc
    try:
        prompts_path = resolve_path(ctx, params.prompts)
    except TokenizerJobError as exc:
        raise GenerateJobError(f"data.prompts: {exc}") from exc
    if not prompts_path.is_file():
        raise GenerateJobError(f"data.prompts {params.prompts!r} not found (looked at {prompts_path})")
    samples, dropped, examples = read_prompts(prompts_path)
    if not samples:
        raise GenerateJobError(f"data.prompts {params.prompts!r}: no valid prompt (dropped: {dict(dropped)}; "
                               f"examples: {examples}); docs/chat_data.md describes the format")

    think = (special["think_start"].text, special["think_end"].text) if {"think_start", "think_end"} <= set(special) else None
    markers = Markers(call=(special["tool_call_start"].text, special["tool_call_end"].text), think=think)
    prompts = [Prompt(s["id"], tuple(s["messages"]), tuple(s.get("tools") or ()), s.get("fixtures") or {}) for s in samples]
    update = ctx.progress("generate: teacher answers", len(prompts))
    progress = Progress(Path(ctx.work_dir) / PROGRESS_FILE, len(prompts))

    def answered(outcome) -> None:
        if outcome.status != "pending":
            update(1)
            progress.add(1)

    cache = ResponseCache(Path(ctx.cache_dir or ctx.work_dir) / "responses")
    if params.teacher_kind == "openai_compatible":
        teacher = None
        result, facts, budget, parse = run_http(params, ctx, prompts, cache, answered, tok_dir)
    else:
        try:
            model_dir = Path(inputs["teacher"]["model"])
        except KeyError as exc:
            raise GenerateJobError(f"the generate job needs the teacher job's model folder: {exc}") from exc
        device = pick_device(ctx.resources["device"])
        model = load_hf_folder(model_dir, device)
        model.eval()
        teacher_sha = weights_sha256(model)
        stops = [special["eos"].id] + ([special["tool_result_start"].id] if "tool_result_start" in special else [])
        teacher = LocalTeacher(model, tok, template, markers, stops, name=f"local-{params.teacher_kind}",
                               batch=params.batch, temperature=params.temperature, seed=params.seed)
        body = {"temperature": params.temperature} | ({"seed": params.seed} if params.temperature > 0 else {})
        settings = Settings(endpoint=f"local:{params.teacher_kind}", model=f"weights-sha256:{teacher_sha}", body=body,
                            max_tokens=params.max_tokens, tool_rounds=params.tool_rounds,
                            tokenizer_sha256=tree_sha256(tok_dir))
        engine = Engine(settings, cache, Budget(Prices()), lambda d: parse_completion(d, "vllm"), answered)
        result = asyncio.run(engine.run(prompts, teacher.complete, in_flight=2 * params.batch))
        facts, budget = {"teacher_sha256": teacher_sha, "device": device.type, "generated_tokens": teacher.generated_tokens,
                         "batches": teacher.batches}, None
    progress.finish(sum(o.status != "pending" for o in result.outcomes))

    # -- verify the transcripts -----------------------------------------------------------------
    transcripts, reasons = [], Counter()
    calls = hits = 0
    for sample, outcome in zip(samples, result.outcomes):
        calls, hits = calls + outcome.fixture_calls, hits + outcome.fixture_hits
        reason = outcome.reason if outcome.status != "done" else None
        transcript = {"id": sample["id"], "kind": sample["kind"], "messages": outcome.messages,
                      "tools": sample.get("tools") or [], "pii": sample.get("pii") or []}
        if reason is None and outcome.truncated:
            reason = "max_tokens"
        if reason is None and _markup_left(outcome.messages, markers):
            reason = "unparsed_call"
        if reason is None and (drop := validate_chat(transcript)) is not None:
            reason = drop.reason
        if reason is not None:
            reasons[reason] += 1
            bucket = examples.setdefault(reason, [])
            if len(bucket) < 5:
                bucket.append(sample["id"])
            continue
        transcripts.append(transcript)
    with open(out / "transcripts.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for t in transcripts:
            fh.write(json.dumps(t, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")

    # -- rows and targets -------------------------------------------------------------------------
    L, pad = params.max_seq_len, special["pad"].id
    rows, meta, align, roundtrip = [], [], Counter(), 0
    answers = answer_tokens(cache, result, parse, {t["id"] for t in transcripts}) if params.top_k > 0 and teacher is None else {}
    sparse_targets, mismatch = [], 0
    for t in transcripts:
        if params.logit_kd:  # the row holds the teacher's own ids where it wrote, so its logprobs line up
            enc = encode_with_answers(t, tok, template, [a.token_ids for a in answers[t["id"]]])
            mismatch += enc.template_mismatch
        else:
            enc = encode_chat(t, tok, template, arguments_as_dict=True)
        if len(enc.input_ids) > L:
            reasons["too_long"] += 1
            continue
        if params.logit_kd:
            sparse_targets.append((enc.answer_positions, answers[t["id"]]))
        else:
            align.update({m: n for m, n in enc.alignment_errors.items() if n})
            roundtrip += not enc.roundtrip_ok
        rows.append({"input_ids": enc.input_ids, **enc.masks})
        tools = [call["function"]["name"] for *_, call in iter_calls(t["messages"])]
        meta.append({"id": t["id"], "kind": t["kind"], "row": len(meta), "length": len(enc.input_ids),
                     "tool": tools[0] if tools else None, "tools": tools})
    arrays = write_rows(out / "data", "train", rows, meta, L, {"split": "train", "max_seq_len": L, "pad_id": pad,
                                                               "bos_id": special["bos"].id, "eos_id": special["eos"].id,
                                                               "source": "generate"})
    lengths = arrays["attention_mask"].sum(axis=1).astype(np.int64)
    if teacher is not None:  # a local teacher: its top-k logits over the rows, as the teacher job computes them
        vocab_rows = check_vocab(model, f"teacher {model_dir}", tok, inputs["tokenizer"].get("report"), {"train": arrays})
        targets = write_targets(model, out / "targets", {"train": (arrays, lengths)}, params.top_k, teacher_sha,
                                ctx.cache_dir, device, ctx, vocab_rows)
        facts |= {"target_cache_hits": targets.hits, "target_cache_misses": targets.misses}
    elif params.top_k > 0:  # an HTTP teacher: its top-k logprobs per generated token, as it sent them
        facts |= write_logprobs(out / "logprobs", params.top_k, answers)
        if params.logit_kd:
            facts |= write_sparse_targets(out / "targets", sparse_targets, len(rows), L, params.top_k)
            facts["template_mismatch"] = mismatch
            facts["kd"] = "logit (kl on the teacher's top-k logprobs and the mass outside them)"

    valid = len(samples)
    failed = valid - len(rows)
    failure_rate = failed / valid
    metrics = {
        "fixture_hit_rate": {"value": hits / calls, "n": calls} if calls else {"not_run": "the teacher made no tool call"},
        "failure_rate": {"value": failure_rate, "n": valid},
        "prompts_read": valid + sum(dropped.values()), "prompts_valid": valid, "transcripts": len(rows),
        "rows": len(rows), "tokens": int(lengths.sum()),
        "padding_fraction": float(1 - lengths.sum() / (len(rows) * L)) if rows else 0.0,
        "requests_generated": result.sent, "requests_cached": result.cached,
        **facts, "seconds": round(time.perf_counter() - start, 3),
    }
    report = {
        "metrics": {k: metrics[k] for k in ("fixture_hit_rate", "failure_rate")},
        **{k: v for k, v in metrics.items() if k not in ("fixture_hit_rate", "failure_rate")},
        "teacher_kind": params.teacher_kind,
        "prompts": {"path": params.prompts, "sha256": tree_sha256(prompts_path)},
        "prompts_dropped_by_reason": dict(sorted(dropped.items())),
        "transcripts_dropped_by_reason": dict(sorted(reasons.items())),
        "fixture_calls": calls, "fixture_hits": hits,
        "dropped_examples": dict(sorted(examples.items())),
        "alignment_errors": dict(sorted(align.items())), "roundtrip_errors": roundtrip,
        "chat_template_sha256": hashlib.sha256(template.source.encode("utf-8")).hexdigest(), "max_failure_rate": params.max_failure_rate,
        "provenance": ctx.provenance,
    }
    if budget is not None:
        report["budget"] = {"spent": budget.spent, "cap": budget.prices.cap, "described": budget.describe(),
                            "stopped": result.stopped}
    write_report(out, report)
    if result.stopped:
        field = "teacher.budget.max_usd" if params.http.max_usd is not None else "teacher.budget.max_tokens"
        raise GenerateJobError(
            f"the spend budget is reached ({budget.describe()}): {sum(o.status == 'done' for o in result.outcomes)} of "
            f"{valid} prompts are done and stored; raise {field} and run again: answered requests are not paid twice")
    if failure_rate > params.max_failure_rate:
        raise GenerateJobError(
            f"{failed} of {valid} prompts ({failure_rate:.1%}) gave no usable transcript, more than "
            f"teacher.generation.max_failure_rate {params.max_failure_rate:g}: {dict(sorted(reasons.items()))} "
            f"(examples in {out / 'report.json'}); raise max_tokens or tool_rounds, fix the prompts' fixtures, "
            "or raise max_failure_rate")
    if not rows:
        raise GenerateJobError("no transcript became a training row; see the report's transcripts_dropped_by_reason")
    return {"fixture_hit_rate": hits / calls if calls else None, "failure_rate": failure_rate, "transcripts": len(rows),
            "tokens": int(lengths.sum())}
