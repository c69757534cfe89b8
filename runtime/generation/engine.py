"""Prompts to transcripts: the rounds, the cache, the budget and the failure accounting.

For each prompt the engine sends the conversation, and while the teacher answers with tool calls
(up to `tool_rounds` rounds) it answers each call from the prompt's fixtures and sends the
conversation again; the teacher's final answer ends the transcript. A call with no fixture drops
the sample (reason `no_fixture`, counted; the hit rate is reported). Each answer's finish reason is
kept on the outcome (`truncated`: one was cut at `max_tokens`; the generate job drops those). The
teacher's reasoning (`reasoning_content`) is kept on its turn.

Every round is one request, cached by its canonical body (runtime/generation/cache.py). Before
anything is sent, `replay` walks every prompt through the cache as far as stored answers go: a
resumed job re-sends nothing that was answered, counts what was already paid against the budget
first, and knows how many prompts are already done. Only then are the misses sent, at most
`in_flight` at a time; each reserves its worst case in the budget (runtime/generation/budget.py)
and is not sent when that could cross the cap. Once one request is refused by the budget no new
one is admitted, what is in flight finishes and is stored, and the result says so (`stopped`).

A request still failing after the client's retries fails its prompt with the reason; so does an
answer that does not parse (it is paid for but not stored, so a rerun asks again instead of
failing on the same body). A fatal answer (runtime/generation/client.py) stops everything at once
and propagates. `tool_rounds` is the number of rounds of tool calls answered: the teacher writes at
most `tool_rounds + 1` turns, the last its final answer.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from runtime.data import chat_checks

from .budget import Budget, prompt_token_bound
from .cache import ResponseCache, request_key
from .client import FatalTeacherError, RequestFailed


class Parsed(Protocol):
    content: str | None
    tool_calls: tuple[Any, ...]  # each with .id, .name, .arguments (the JSON text sent)
    usage: Any


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()
    fixtures: dict[str, Any] = field(default_factory=dict)  # tool name -> result, or [{arguments, result}, ...]


@dataclass
class Outcome:
    prompt_id: str
    status: str = "pending"  # done | dropped | failed | not_admitted
    reason: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # the conversation, teacher turns appended
    responses: list[str] = field(default_factory=list)  # the cache key of each round's answer
    fixture_calls: int = 0
    fixture_hits: int = 0
    finish_reasons: list[str | None] = field(default_factory=list)  # per answer; "length": cut at max_tokens

    @property
    def truncated(self) -> bool:
        return "length" in self.finish_reasons


@dataclass
class Result:
    outcomes: list[Outcome]
    sent: int = 0
    cached: int = 0
    stopped: bool = False  # the budget refused a request: resumable, raise the cap

    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def reasons(self) -> Counter:
        return Counter(o.reason for o in self.outcomes if o.reason)


@dataclass
class Settings:
    endpoint: str
    model: str
    body: dict[str, Any]  # generation settings, logprob settings and server extensions, sent with every request
    max_tokens: int
    tool_rounds: int
    tokenizer_sha256: str | None = None


def message_of(parsed: Parsed) -> dict[str, Any]:
    """The answer's turn as plain data (what the cache keeps beside the raw body): content, calls, and the
    reasoning and finish reason when the answer has them (entries stored without them read as None)."""
    message = {"content": parsed.content,
               "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]}
    if getattr(parsed, "reasoning", None) is not None:
        message["reasoning_content"] = parsed.reasoning
    if getattr(parsed, "finish_reason", None) is not None:
        message["finish_reason"] = parsed.finish_reason
    return message


def find_fixture(prompt: Prompt, name: str, arguments: str) -> tuple[bool, Any]:
    """(found, result) for a call: the rule chat samples are checked with (runtime/data/chat_checks.py)."""
    return chat_checks.find_fixture(prompt.fixtures, name, arguments)


class Engine:
    def __init__(self, settings: Settings, cache: ResponseCache, budget: Budget,
                 parse: Callable[[dict[str, Any]], Parsed], on_answer: Callable[[Outcome], None] | None = None) -> None:
        """`on_answer(outcome)` is called after each answer is recorded, and once for each prompt the cache
        alone finishes (status no longer "pending": its transcript is complete or it was dropped)."""
        self.s = settings
        self.cache = cache
        self.budget = budget
        self.parse = parse
        self.on_answer = on_answer or (lambda outcome: None)
        self._stop = False

    def body(self, prompt: Prompt, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": self.s.model, "messages": messages, "max_tokens": self.s.max_tokens, **self.s.body}
        if prompt.tools:
            body["tools"] = list(prompt.tools)
        return body

    def key(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return request_key(self.s.endpoint, self.s.model, body, self.s.tokenizer_sha256)

    def _advance(self, prompt: Prompt, out: Outcome, message: dict[str, Any], key: str) -> bool:
        """Record one answer (its `message`: content and tool calls); True when the conversation
        continues (tool calls answered from fixtures)."""
        out.responses.append(key)
        out.finish_reasons.append(message.get("finish_reason"))
        calls = message.get("tool_calls") or []
        turn: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("reasoning_content") is not None:
            turn["reasoning_content"] = message["reasoning_content"]
        ids = [c.get("id") or f"call_{len(out.responses)}_{i}" for i, c in enumerate(calls)]  # ids are optional on the wire
        if calls:
            turn["tool_calls"] = [{"id": cid, "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                                  for cid, c in zip(ids, calls)]
        out.messages.append(turn)
        if not calls:
            out.status = "done"
            return False
        if len(out.responses) > self.s.tool_rounds:
            out.status, out.reason = "dropped", "too_many_rounds"
            return False
        for cid, call in zip(ids, calls):
            out.fixture_calls += 1
            found, result = find_fixture(prompt, call["name"], call["arguments"])
            if not found:
                out.status, out.reason = "dropped", "no_fixture"
                return False
            out.fixture_hits += 1
            content = result if isinstance(result, str) else json.dumps(result, sort_keys=True)
            out.messages.append({"role": "tool", "tool_call_id": cid, "content": content})
        return True

    def replay(self, prompts: list[Prompt]) -> tuple[list[Outcome], int]:
        """Walk every prompt through the cache; count what was paid before. (outcomes, cache hits)."""
        outcomes, hits = [], 0
        for prompt in prompts:
            out = Outcome(prompt.id, messages=[dict(m) for m in prompt.messages])
            while out.status == "pending":
                key, _ = self.key(self.body(prompt, out.messages))
                entry = self.cache.get(key)
                if entry is None:
                    break
                hits += 1
                self.budget.add_paid(entry.usage)
                self._advance(prompt, out, entry.message, key)
            outcomes.append(out)
        return outcomes, hits

    async def run(self, prompts: list[Prompt], send: Callable[[dict[str, Any], int], Any], in_flight: int) -> Result:
        """`send(body, worst_tokens)` -> (raw text, JSON); at most `in_flight` prompts are worked at once."""
        outcomes, hits = self.replay(prompts)
        for out in outcomes:  # finished from the cache alone: reported like a fresh answer
            if out.status != "pending":
                self.on_answer(out)
        result = Result(outcomes, cached=hits)
        pending = [(p, o) for p, o in zip(prompts, outcomes) if o.status == "pending"]
        queue: asyncio.Queue = asyncio.Queue()
        for item in pending:
            queue.put_nowait(item)

        async def worker() -> None:
            while not self._stop:
                try:
                    prompt, out = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._work(prompt, out, send, result)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, min(in_flight, len(pending))))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        for out in outcomes:
            if out.status == "pending":
                out.status, out.reason = "not_admitted", "budget"
        result.stopped = self._stop
        return result

    async def _work(self, prompt: Prompt, out: Outcome, send, result: Result) -> None:
        while out.status == "pending":
            body = self.body(prompt, out.messages)
            key, request = self.key(body)
            entry = self.cache.get(key)  # another worker or an earlier round may have stored it
            if entry is not None:
                result.cached += 1
                self._advance(prompt, out, entry.message, key)
                continue
            reservation = self.budget.reserve(prompt_token_bound(body), self.s.max_tokens)
            if reservation is None or self._stop:
                if reservation is not None:
                    self.budget.release(reservation)
                self._stop = True
                return
            try:
                text, data = await send(body, prompt_token_bound(body) + self.s.max_tokens)
            except RequestFailed as exc:
                self.budget.release(reservation)
                out.status, out.reason = "failed", exc.reason
                return
            except FatalTeacherError:
                self.budget.release(reservation)
                self._stop = True
                raise
            except BaseException:
                self.budget.release(reservation)
                raise
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
            self.budget.settle(reservation, usage)  # answered: paid, whether or not it parses
            result.sent += 1
            try:
                message = message_of(self.parse(data))
            except ValueError as exc:  # not stored: a rerun asks again rather than failing on the same body
                out.status, out.reason = "failed", "unparseable"
                out.messages.append({"role": "error", "content": str(exc)[:300]})
                return
            # stored before the conversation moves on; fsync off the event loop, so the other requests in
            # flight are not held up behind each write
            await asyncio.to_thread(self.cache.put, key, request, text, usage, message)
            self._advance(prompt, out, message, key)
            self.on_answer(out)


async def generate(prompts: list[Prompt], ep: Any, api_key: str, settings: Settings, cache: ResponseCache, budget: Budget,
                   parse: Callable[[dict[str, Any]], Parsed], on_answer: Callable[[Outcome], None] | None = None) -> Result:
    """Run `prompts` against the endpoint `ep` (runtime/generation/client.py Endpoint) with one client."""
    from .client import TeacherClient

    client = TeacherClient(ep, api_key)
    try:
        engine = Engine(settings, cache, budget, parse, on_answer)
        return await engine.run(prompts, client.complete, ep.max_in_flight)
    finally:
        await client.aclose()
