"""The generate job's HTTP half: an OpenAI-compatible teacher, its answers' token logprobs, the sparse KL targets.

`run_http` reads the key from the environment, compares vocabularies before any request when logit KD is
asked for, sends a preflight request through the cache and the budget, then runs the engine through the
`openai` client. `answer_tokens` reads each kept transcript's answers back from the cache once; from them
`write_logprobs` keeps the top-k logprobs as sent (a sparse store) and `write_sparse_targets` lays them
out against the rows built on the teacher's own ids (runtime/data/teacher_ids.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np

from runtime.generation.budget import Budget, Prices
from runtime.generation.cache import ResponseCache
from runtime.generation.client import Endpoint, FatalTeacherError, TeacherClient
from runtime.generation.engine import Engine, Prompt, Settings, message_of
from runtime.generation.preflight import PreflightFailed, preflight, shared_vocabulary
from runtime.generation.sparse import SparseStore, SparseWriter, log_tail, pad_entries
from runtime.generation.wire import ByteVocab, parse_completion, request_extras
from runtime.hashing import tree_sha256

from .tokenizer import TokenizerJobError, resolve_path


class GenerateJobError(RuntimeError):
    pass


def run_http(params, ctx, prompts: list[Prompt], cache: ResponseCache, answered, student_tok: Path):
    """The engine against an OpenAI-compatible endpoint: the key from the environment, a preflight request
    first (endpoint, key, model, logprobs at k, recoverable ids, shared vocabulary), then every prompt.
    (result, report facts, budget, the parser of its answers)."""
    h = params.http
    key = os.environ.get(h.api_key_env)
    if not key:
        raise GenerateJobError(f"the teacher's API key is read from the environment variable {h.api_key_env} "
                               f"(teacher.api_key_env), which is not set: export {h.api_key_env}=... before running")
    teacher_tok = None
    if h.tokenizer is not None:
        try:
            teacher_tok = resolve_path(ctx, h.tokenizer)
        except TokenizerJobError as exc:
            raise GenerateJobError(f"teacher.tokenizer: {exc}") from exc
        if not (teacher_tok / "tokenizer.json").is_file():
            raise GenerateJobError(f"teacher.tokenizer {h.tokenizer!r} has no tokenizer.json (looked in {teacher_tok})")
    if params.logit_kd:  # before any paid request: logit KD compares ids, so the vocabularies must be one
        equal, why = shared_vocabulary(teacher_tok, student_tok)
        if not equal:
            raise GenerateJobError(f"training.losses.kl asks for logit KD from {h.model}, which needs its tokenizer to equal "
                                   f"the student's: {why}; drop losses.kl (sequence-level KD) or distil a student "
                                   "whose tokenizer is the teacher's (tokenizer.source: pretrained, its folder)")
    vocab = ByteVocab.from_tokenizer_json(teacher_tok / "tokenizer.json") if h.token_ids == "bytes" and teacher_tok else None
    body = {"temperature": params.temperature, "top_p": h.top_p} | ({"seed": h.sampling_seed} if h.sampling_seed is not None else {})
    body |= request_extras(h.token_ids, params.top_k)
    settings = Settings(endpoint=h.base_url, model=h.model, body=body, max_tokens=params.max_tokens,
                        tool_rounds=params.tool_rounds,
                        tokenizer_sha256=tree_sha256(teacher_tok / "tokenizer.json") if teacher_tok else None)
    prices = Prices(max_usd=h.max_usd, input_per_million=h.usd_per_million_input,
                    output_per_million=h.usd_per_million_output, max_tokens=h.max_tokens_budget)
    budget = Budget(prices)
    ep = Endpoint(h.base_url, h.model, h.api_key_env, timeout_s=h.timeout_s, retries=h.retries, max_in_flight=h.in_flight,
                  requests_per_minute=h.requests_per_minute, tokens_per_minute=h.tokens_per_minute)
    parse = (lambda d: parse_completion(d, h.token_ids, vocab=vocab, top_k=params.top_k or None))
    engine = Engine(settings, cache, budget, parse, answered)

    async def go():
        client = TeacherClient(ep, key)
        try:
            async def checked(body: dict, worst: int):  # the preflight is an ordinary request: cached and budgeted
                request_key_, request = engine.key(body)
                entry = cache.get(request_key_)
                text = cache.body(entry) if entry is not None else None
                if text is not None:
                    budget.add_paid(entry.usage)
                    return text, json.loads(text)
                reservation = budget.reserve(worst, 0)
                if reservation is None:
                    raise GenerateJobError(f"the spend budget ({budget.describe()}) cannot cover even the preflight request")
                try:
                    text, data = await client.complete(body, worst)
                except BaseException:
                    budget.release(reservation)
                    raise
                usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
                budget.settle(reservation, usage)
                await asyncio.to_thread(cache.put, request_key_, request, text, usage, message_of(parse(data)))
                return text, data

            check = await preflight(checked, h.model, body, h.token_ids, params.top_k, teacher_tok, student_tok)
            return check, await engine.run(prompts, client.complete, ep.max_in_flight)
        finally:
            await client.aclose()

    try:
        check, result = asyncio.run(go())
    except (FatalTeacherError, PreflightFailed) as exc:
        raise GenerateJobError(f"teacher {h.base_url} (model {h.model}): {exc}") from None
    facts = {"endpoint": h.base_url, "model": h.model, "token_ids": h.token_ids,
             "preflight": {"positions": check.positions, "top_k": check.top_k, "logit_kd_possible": check.logit_kd,
                           "why_not": check.reason},
             "kd": "sequence-level (cross-entropy on the teacher's tokens)"}
    if not check.logit_kd:
        ctx.log(f"teacher {h.model}: logit KD is not possible ({check.reason}); training uses the teacher's tokens")
    return result, facts, budget, parse


def answer_tokens(cache: ResponseCache, result, parse, keep: set[str]) -> dict[str, list]:
    """Per kept transcript, in the engine's order, its answers' token logprobs (chosen ids, top ids, top logprobs),
    each stored body read and parsed once."""
    out = {}
    for outcome in result.outcomes:
        if outcome.prompt_id not in keep:
            continue
        tokens = []
        for key in outcome.responses:
            entry = cache.get(key)
            text = cache.body(entry) if entry is not None else None
            parsed = parse(json.loads(text)).tokens if text is not None else None
            if parsed is None or len(parsed) == 0:
                raise GenerateJobError(f"the stored answer {key[:16]} of {outcome.prompt_id} has no token logprobs "
                                       "(teacher.top_k > 0 needs a server that returns them)")
            tokens.append(parsed)
        out[outcome.prompt_id] = tokens
    return out


def write_logprobs(folder: Path, k: int, answers: dict[str, list]) -> dict:
    """The teacher's top-k logprobs of every generated token, as it sent them (exact ids), in a sparse store
    (runtime/generation/sparse.py), one sequence per answer; `answers.jsonl` names each sequence (transcript id,
    answer index) and its chosen token ids."""
    index = []
    with SparseWriter(folder, k) as writer:
        for prompt_id, tokens_list in answers.items():
            for n, tokens in enumerate(tokens_list):
                writer.append_entries([list(zip(ids, lps)) for ids, lps in zip(tokens.top_ids, tokens.top_logprobs)])
                index.append({"id": prompt_id, "answer": n, "token_ids": list(tokens.token_ids)})
    (folder / "answers.jsonl").write_text("".join(json.dumps(i, separators=(",", ":")) + "\n" for i in index), encoding="utf-8")
    store = SparseStore(folder)
    return {"logprobs": {"top_k": k, "answers": len(index), "tokens": store.n_tokens,
                         "bytes_per_token": round(store.bytes_per_token(), 2)}}


def write_sparse_targets(folder: Path, rows: list, n: int, L: int, k: int) -> dict:
    """The KL targets of the generated rows, aligned to the row: at position p - 1 for each answer token at p, the
    teacher's top-k ids (-1 where it sent fewer) and full-distribution logprobs, the log of the mass outside them,
    and `kd_mask` 1 (0 everywhere else)."""
    from runtime.data.shards import write_shards

    ids = np.full((n, L, k), -1, dtype=np.int32)
    lps = np.zeros((n, L, k), dtype=np.float32)
    tail = np.zeros((n, L), dtype=np.float32)
    kd = np.zeros((n, L), dtype=np.int32)
    positions = 0
    for r, (answer_positions, answers) in enumerate(rows):  # answers: the row's TokenLogprobs, one per answer
        for where, tokens in zip(answer_positions, answers):
            top_ids, top_lps = pad_entries([list(zip(i, lp)) for i, lp in zip(tokens.top_ids, tokens.top_logprobs)], k)
            at = np.asarray(where, dtype=np.int64) - 1
            ok = at >= 0  # a row never starts with an answer (the template writes bos first), but never index -1
            ids[r, at[ok]] = top_ids[ok]
            lps[r, at[ok]] = np.where(top_ids[ok] >= 0, top_lps[ok], 0.0)
            tail[r, at[ok]] = log_tail(top_lps[ok])
            kd[r, at[ok]] = 1
            positions += int(ok.sum())
    folder.mkdir(parents=True, exist_ok=True)
    info = json.dumps({"split": "train", "format": "sparse-tail", "top_k": k}, sort_keys=True)
    write_shards(folder, "train", {"topk_ids": ids, "topk_logprobs": lps, "topk_log_tail": tail, "kd_mask": kd}, None,
                 {"modelspec": info})
    return {"kd_positions": positions}


