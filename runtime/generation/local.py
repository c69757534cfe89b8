"""A local transformers teacher answering chat-completion requests in process, batched.

The generate job runs the same engine (runtime/generation/engine.py: rounds, fixtures, cache,
resume) for every teacher kind; for the local kinds (`train`, `hf_local`) this module stands where
the HTTP server would. `LocalTeacher.complete(body, worst)` takes an OpenAI chat-completions body
and returns `(raw text, JSON)` shaped as vLLM answers it, so the wire parser reads it unchanged:

- the conversation is rendered with the tokenizer's chat template (`add_generation_prompt`, the
  tools passed as `tools`), tokenized without extra special tokens (the template writes them);
- requests waiting together (up to `batch`) are generated in one `model.generate` call (left
  padding; greedy at temperature 0, else seeded sampling), each stopping at eos, at the tool-result
  marker (a teacher trained on transcripts would otherwise write the tool's answer itself) or at
  `max_tokens` (`finish_reason: length`);
- the text is split as vLLM's reasoning and tool parsers (hermes style) split it: the reasoning
  between the think markers, each call between the tool-call markers as
  `{"name": ..., "arguments": {...}}` JSON, the rest the content. A call whose JSON does not parse
  stays in the content, as vLLM leaves it; the generate job drops such transcripts
  (`unparsed_call`).

Generation runs on a worker thread (`asyncio.to_thread`), one batch at a time; the event loop only
queues requests. Logprobs are not returned: a local teacher's top-k targets are computed over the
final training rows by a forward pass (runtime/jobs/teacher_targets.py), on the ids the student
trains on.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import torch

from runtime.data.chat import ChatTemplate

GATHER_S = 0.005  # how long the batcher waits for more requests before generating a partial batch


@dataclass(frozen=True)
class Markers:
    """The texts that delimit reasoning and calls in what the teacher writes (the spec's special tokens)."""

    call: tuple[str, str]
    think: tuple[str, str] | None = None


def split_turn(text: str, markers: Markers) -> dict[str, Any]:
    """{"content", "reasoning_content", "tool_calls"} from a turn's text (see the module docstring)."""
    reasoning = None
    if markers.think is not None:
        a, b = markers.think
        stripped = text.lstrip()
        if stripped.startswith(a) and b in stripped:
            end = stripped.index(b)
            reasoning, text = stripped[len(a):end], stripped[end + len(b):]
    start, end = (re.escape(m) for m in markers.call)
    calls, kept, cursor = [], [], 0
    for match in re.finditer(f"{start}(.*?){end}", text, flags=re.DOTALL):
        try:
            call = json.loads(match.group(1))
            name, arguments = call["name"], call["arguments"]
            if not isinstance(name, str) or not isinstance(arguments, dict):
                raise TypeError("name must be a string and arguments an object")
        except (ValueError, KeyError, TypeError):
            continue  # left in the content, as vLLM's tool parsers leave a call they cannot read
        kept.append(text[cursor:match.start()])
        cursor = match.end()
        calls.append({"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)})
    kept.append(text[cursor:])
    content = "".join(kept)
    return {"content": content if content.strip() else (None if calls else content),
            "reasoning_content": reasoning, "tool_calls": calls}


class LocalTeacher:
    def __init__(self, model, tokenizer, template: ChatTemplate, markers: Markers, stop_ids: list[int], *, name: str,
                 batch: int, temperature: float, seed: int) -> None:
        self.model, self.tok, self.template, self.markers = model, tokenizer, template, markers
        self.stop_ids, self.name, self.batch = sorted(set(stop_ids)), name, batch
        self.temperature, self.seed = temperature, seed
        self._queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.generated_tokens = 0

    async def complete(self, body: dict[str, Any], worst_tokens: int) -> tuple[str, dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((body, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            if len(self._queue) < self.batch:
                await asyncio.sleep(GATHER_S)  # let the other workers queue their requests
            taken, self._queue = self._queue[:self.batch], self._queue[self.batch:]
            try:
                answers = await asyncio.to_thread(self._generate, [b for b, _ in taken])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), answer in zip(taken, answers):
                if not future.done():
                    future.set_result(answer)

    def prompt_text(self, body: dict[str, Any]) -> str:
        return self.template.render(body["messages"], body.get("tools") or None, add_generation_prompt=True,
                                    **self.tok.special_tokens_map)

    @torch.no_grad()
    def _generate(self, bodies: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        texts = [self.prompt_text(b) for b in bodies]
        side = self.tok.padding_side
        self.tok.padding_side = "left"
        try:
            enc = self.tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        finally:
            self.tok.padding_side = side
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        max_new = max(int(b.get("max_tokens") or 0) for b in bodies)
        sampling = self.temperature > 0
        if sampling:
            torch.manual_seed(self.seed + self.batches)
        out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=sampling,
                                  temperature=self.temperature if sampling else None, top_p=None, top_k=None,
                                  eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id)
        self.batches += 1
        width = enc["input_ids"].shape[1]
        answers = []
        for i, body in enumerate(bodies):
            new = out[i, width:].tolist()
            limit = int(body.get("max_tokens") or max_new)
            stop = next((k for k, t in enumerate(new[:limit]) if t in self.stop_ids), None)
            ids = new[:stop] if stop is not None else new[:limit]
            self.generated_tokens += len(ids) + (stop is not None)
            text = self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            answers.append(self._answer(i, body, text, stop is not None, int(enc["attention_mask"][i].sum()),
                                        len(ids) + (stop is not None)))
        return answers

    def _answer(self, index: int, body: dict[str, Any], text: str, stopped: bool, prompt_tokens: int,
                completion_tokens: int) -> tuple[str, dict[str, Any]]:
        turn = split_turn(text, self.markers)
        message: dict[str, Any] = {"role": "assistant", "content": turn["content"]}
        if turn["reasoning_content"] is not None:
            message["reasoning_content"] = turn["reasoning_content"]
        if turn["tool_calls"]:
            message["tool_calls"] = [{"id": f"call_{self.batches}_{index}_{j}", "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}}
                                     for j, c in enumerate(turn["tool_calls"])]
        finish = "length" if not stopped else ("tool_calls" if turn["tool_calls"] else "stop")
        data = {"id": f"local-{self.batches}-{index}", "object": "chat.completion", "model": self.name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
        return json.dumps(data, ensure_ascii=False), data
