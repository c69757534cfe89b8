"""One small request before any paid work: is this teacher what the spec says it is?

`preflight` sends one short chat request (a fixed prompt, `PREFLIGHT_TOKENS` tokens) with the
job's own settings and checks, in order, stopping at the first failure with what to change:

1. the endpoint answers, the key is accepted and the pinned model exists (the client's fatal
   errors: HTTP status, endpoint, hint);
2. logprobs come back at every generated position, with `top_k` alternatives each (a vLLM server
   started with a smaller `--max-logprobs` answers 400; some servers silently send fewer);
3. the token ids are recoverable in the spec's `token_ids` mode (wire.py), below the served
   tokenizer's size, and, decoded with the served tokenizer, they spell the returned text (so
   the ids mean what the tokenizer says: a wrong tokenizer folder is caught here);
4. whether the served tokenizer's vocabulary equals the student's, token string to id. Logit KD
   needs it; the result says `logit_kd: False` and why when it does not, so the plan can use
   sequence-level KD (cross-entropy on the teacher's tokens) instead.

The request is an ordinary request: it goes through the cache (a rerun does not pay for it
again) and the budget like every other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.reading.vocab import read_vocab, vocabulary_differences

PREFLIGHT_PROMPT = "Reply with one short sentence: what is distillation?"
PREFLIGHT_TOKENS = 8


class PreflightFailed(RuntimeError):
    """The teacher is not usable as specified; the message says what to change."""


@dataclass
class PreflightResult:
    model: str
    positions: int
    top_k: int
    logit_kd: bool
    reason: str = ""  # why logit KD is off, when it is
    facts: dict[str, Any] = field(default_factory=dict)


def check_answer(data: dict[str, Any], mode: str, top_k: int, teacher_tokenizer: Path | None) -> tuple[int, dict[str, Any]]:
    """Steps 2 and 3 on one decoded response: (positions checked, facts)."""
    from .wire import ByteVocab, WireError, parse_completion

    vocab = ByteVocab.from_tokenizer_json(teacher_tokenizer / "tokenizer.json") if mode == "bytes" and teacher_tokenizer else None
    try:
        completion = parse_completion(data, mode, vocab=vocab)
    except (WireError, ValueError) as exc:
        raise PreflightFailed(f"the teacher's answer does not give token ids in mode token_ids: {mode}: {exc}") from None
    if top_k == 0:
        return 0, {"content": completion.content}
    tokens = completion.tokens
    if tokens is None or len(tokens) == 0:
        raise PreflightFailed("the teacher returned no logprobs although they were asked for: the server does not support "
                              "them for this model, or drops them (vLLM: --max-logprobs; hosted APIs: a model without logprobs)")
    short = [i for i, n in enumerate(tokens.top_counts) if n < top_k]
    if short:
        raise PreflightFailed(f"the teacher returned fewer than top_k={top_k} alternatives at {len(short)} of {len(tokens)} "
                              f"positions (first: position {short[0]}, {tokens.top_counts[short[0]]} alternatives): "
                              f"lower teacher.top_k, or raise the server's limit (vLLM: --max-logprobs {top_k})")
    facts: dict[str, Any] = {"content": completion.content, "token_ids": list(tokens.token_ids)}
    if teacher_tokenizer is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(teacher_tokenizer / "tokenizer.json"))
        size = tok.get_vocab_size(with_added_tokens=True)
        too_big = [i for i in tokens.token_ids if i >= size] + [i for ids in tokens.top_ids for i in ids if i >= size]
        if too_big:
            raise PreflightFailed(f"the teacher returned token id {too_big[0]}, beyond the {size} tokens of teacher.tokenizer "
                                  f"({teacher_tokenizer}): it is not the served model's tokenizer")
        spelled = tok.decode(list(tokens.token_ids), skip_special_tokens=True)
        text = completion.content or ""
        if text and spelled.strip() and text.strip() not in spelled and spelled.strip() not in text:
            raise PreflightFailed(f"the returned token ids decode to {spelled[:60]!r} with teacher.tokenizer, but the teacher "
                                  f"wrote {text[:60]!r}: teacher.tokenizer ({teacher_tokenizer}) is not the served model's")
    return len(tokens), facts


def shared_vocabulary(teacher_tokenizer: Path | None, student_tokenizer: Path) -> tuple[bool, str]:
    """Step 4: (equal, why not)."""
    if teacher_tokenizer is None:
        return False, "teacher.tokenizer is not set, so the teacher's ids cannot be compared with the student's"
    teacher = read_vocab(Path(teacher_tokenizer) / "tokenizer.json")
    student = read_vocab(Path(student_tokenizer) / "tokenizer.json")
    if teacher is None or student is None:
        return False, "a tokenizer.json could not be read as a token -> id map"
    diff = vocabulary_differences(teacher, student)
    return (not diff), (f"the served tokenizer differs from the student's: {diff}" if diff else "")


async def preflight(send, model: str, body_extras: dict[str, Any], mode: str, top_k: int,
                    teacher_tokenizer: Path | None, student_tokenizer: Path) -> PreflightResult:
    """`send(body, worst_tokens) -> (text, data)`: the job's sender (client, cache and budget around it)."""
    body = {"model": model, "messages": [{"role": "user", "content": PREFLIGHT_PROMPT}],
            **body_extras, "max_tokens": PREFLIGHT_TOKENS}
    _, data = await send(body, 64 + PREFLIGHT_TOKENS)
    positions, facts = check_answer(data, mode, top_k, teacher_tokenizer)
    equal, why = shared_vocabulary(teacher_tokenizer, student_tokenizer)
    return PreflightResult(model, positions, top_k, logit_kd=equal and top_k > 0,
                           reason=why if not equal else ("teacher.top_k is 0" if top_k == 0 else ""), facts=facts)
