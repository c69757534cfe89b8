"""Talking to an OpenAI-compatible teacher: the `openai` client, rate limits, error classes.

`TeacherClient.complete(body)` sends one chat-completions request through `AsyncOpenAI.post` (the
client's request path: its retries of 408, 409, 429 and 5xx answers, timeouts and broken
connections, honouring Retry-After, and its typed errors) with the body exactly as the engine built
it, server extensions included, and returns the raw response text, kept byte for byte for the
cache. (`chat.completions.create` would rebuild the body through the SDK's typed parameters: 1.6 of
12.6 s of client time in bench/bench_generation.py's profile, for no check the engine needs.) Around it:

- at most `max_in_flight` requests at once (a semaphore);
- `requests_per_minute` and `tokens_per_minute` as aiolimiter leaky buckets (a request acquires
  its worst-case tokens: prompt bound + max_tokens);
- what the client still raises after its retries is classified: `FatalTeacherError` for answers
  no retry can change (400, 401, 403, 404, 422, a 429 whose code is `insufficient_quota`): the job
  stops at once with the status, the endpoint and what to change; `RequestFailed` for the rest
  (rate limits, 5xx, timeouts, resets, a truncated body that survived the retries): the prompt is
  recorded as failed with its reason and the job fails only past the tolerated rate.

The API key comes from the environment variable the spec names, is handed to the client and to
nothing else; every message that leaves this module has it redacted.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

FATAL_STATUSES = {400, 401, 403, 404, 422}


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key_env: str
    timeout_s: float = 60.0
    retries: int = 4
    max_in_flight: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


class FatalTeacherError(RuntimeError):
    """The teacher refused in a way no retry changes; the message says what to change."""


class RequestFailed(RuntimeError):
    """One request failed after the client's retries; `reason` is a short category."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _hint(status: int, code: str | None, ep: Endpoint) -> str:
    if status == 401:
        return f"the endpoint refused the key: check the key in ${ep.api_key_env} (teacher.api_key_env names the variable)"
    if status == 403:
        return (f"the key has no access to model {ep.model!r}, or the model refuses logprobs (OpenAI's reasoning models do): "
                "use a key with access, another teacher.model, or teacher.top_k: 0")
    if status == 404:
        return (f"no model {ep.model!r} (or no chat-completions route) at {ep.base_url}: check teacher.model against "
                f"GET {ep.base_url.rstrip('/')}/models, and teacher.base_url (it ends in /v1)")
    if status == 429:
        return "the account has no quota left: add credit, or lower teacher.budget to what the account allows"
    return ("the server refused the request as sent: check teacher.generation and teacher.top_k "
            "(OpenAI-style APIs accept 0-20 top logprobs; a vLLM server at most its --max-logprobs)")


def classify(exc: BaseException, ep: Endpoint, secret: str | None) -> BaseException:
    """The exception the job sees: FatalTeacherError, RequestFailed, or `exc` itself when it is not the teacher's."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = _error_code(exc)
        server = redact(_error_message(exc), secret)
        if status in FATAL_STATUSES or (status == 429 and code == "insufficient_quota"):
            return FatalTeacherError(f"teacher {ep.base_url} answered HTTP {status}{f' ({code})' if code else ''}: "
                                     f"{server}; {_hint(status, code, ep)}")
        reason = "rate_limited" if status == 429 else f"http_{status}"
        return RequestFailed(reason, f"HTTP {status} after {ep.retries} retries: {server}")
    if isinstance(exc, openai.APITimeoutError):
        return RequestFailed("timeout", f"no answer within {ep.timeout_s:g} s after {ep.retries} retries")
    if isinstance(exc, openai.APIConnectionError):
        return RequestFailed("connection", f"connection failed after {ep.retries} retries: {redact(str(exc.__cause__ or exc), secret)}")
    return exc


def _error_code(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code") is not None:
            return str(inner.get("code"))
        if isinstance(inner, dict) and inner.get("type") is not None:
            return str(inner.get("type"))
    return getattr(exc, "code", None)


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc)[:300]


def redact(text: str, secret: str | None) -> str:
    """`text` with the key (and any 8+ character piece of it a server echoed) replaced by ***."""
    if not secret:
        return text
    text = text.replace(secret, "***")
    for width in (16, 12, 8):
        if len(secret) > width:
            for start in range(0, len(secret) - width + 1):
                piece = secret[start:start + width]
                if piece in text:
                    text = text.replace(piece, "***")
    return text


class TeacherClient:
    """One AsyncOpenAI client, its limits and its in-flight bound, for one event loop."""

    def __init__(self, ep: Endpoint, api_key: str, *, http_client: Any = None) -> None:
        from aiolimiter import AsyncLimiter
        from openai import AsyncOpenAI

        self.ep = ep
        self._secret = api_key
        self._client = AsyncOpenAI(base_url=ep.base_url, api_key=api_key, max_retries=ep.retries,
                                   timeout=ep.timeout_s, http_client=http_client)
        self._slots = asyncio.Semaphore(ep.max_in_flight)
        self._rpm = AsyncLimiter(ep.requests_per_minute, 60) if ep.requests_per_minute else None
        self._tpm = AsyncLimiter(ep.tokens_per_minute, 60) if ep.tokens_per_minute else None

    async def complete(self, body: dict[str, Any], worst_tokens: int) -> tuple[str, dict[str, Any]]:
        """(raw response text, its JSON) for one request; raises FatalTeacherError or RequestFailed."""
        import openai

        async with self._slots:
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                await self._tpm.acquire(min(float(worst_tokens), self._tpm.max_rate))
            try:  # the body as built (server extensions included), through the client's request path and retries
                text = await self._client.post("/chat/completions", body=body, cast_to=str)
            except openai.OpenAIError as exc:
                raise classify(exc, self.ep, self._secret) from None
        try:
            data = json.loads(text)
        except ValueError:
            raise RequestFailed("truncated", f"the response body is not JSON ({len(text)} bytes)") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise RequestFailed("malformed", "the response has no choices list")
        return text, data

    async def aclose(self) -> None:
        await self._client.close()
