"""The loopback chat server (tests/generation/server.py), checked through the real openai client."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.generation.server import ChatServer, assistant_text, tiny_teacher

KEY = "sk-test-secret"
MODEL = "tiny-teacher"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
AS_IDS = {"return_tokens_as_token_ids": True}


def script(body: dict[str, Any]) -> dict[str, Any] | None:
    """Tool requests get CALL; a user turn 'script: X' gets the text X; others generate freely."""
    if body.get("tools"):
        return {"tool_calls": [CALL]}
    last = body["messages"][-1].get("content") or ""
    return {"content": last.removeprefix("script: ")} if last.startswith("script: ") else None


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def server(teacher: Path) -> Iterator[ChatServer]:
    with ChatServer(teacher, api_key=KEY, model_name=MODEL, script=script) as srv:
        yield srv


@pytest.fixture
def srv(server: ChatServer) -> ChatServer:
    """The shared server with fresh counters and no queued faults."""
    server.faults = []
    server.stats.reset()
    return server


@pytest.fixture(scope="module")
def reference(teacher: Path) -> tuple[Any, Any]:
    """The same checkpoint loaded independently of the server."""
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(teacher)


def client(srv: ChatServer, **kwargs: Any) -> openai.OpenAI:
    options = {"api_key": KEY, "max_retries": 0, **kwargs}
    return openai.OpenAI(base_url=srv.base_url, **options)


def chat(srv: ChatServer, messages: list[dict] = USER, max_tokens: int = 4, **kwargs: Any) -> Any:
    return client(srv).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, **kwargs)


def token_ids(content: list[Any]) -> list[int]:
    """Ids from vLLM's token-id form, checking each entry's shape on the way."""
    ids = []
    for entry in content:
        assert entry.token.startswith("token_id:") and entry.bytes == list(entry.token.encode())
        ids.append(int(entry.token.removeprefix("token_id:")))
    return ids


def reference_rows(reference: tuple[Any, Any], messages: list[dict], ids: list[int],
                   tools: list[dict] | None = None) -> tuple[list[int], torch.Tensor]:
    """Prompt ids and the log-softmax rows predicting `ids`, from one independent forward pass."""
    model, tok = reference
    text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                   tokenize=False)
    prompt = tok.encode(text, add_special_tokens=False)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + ids])).logits[0]
    rows = torch.log_softmax(logits[len(prompt) - 1:-1].float(), dim=-1)
    return prompt, rows


def check_logprobs(content: list[Any], ids: list[int], rows: torch.Tensor, k: int) -> None:
    """Each chosen logprob and the sorted top k equal the reference model's log-softmax."""
    for step, (entry, token) in enumerate(zip(content, ids)):
        assert abs(entry.logprob - float(rows[step, token])) < 1e-5
        tops = [e.logprob for e in entry.top_logprobs]
        assert len(tops) == k and tops == sorted(tops, reverse=True)
        values, indices = torch.topk(rows[step], k)
        assert token_ids(entry.top_logprobs) == indices.tolist()
        assert tops == pytest.approx(values.tolist(), abs=1e-5)


def test_models_lists_the_served_name(srv: ChatServer) -> None:
    assert [m.id for m in client(srv).models.list()] == [MODEL]
    assert srv.stats.requests == 0  # only chat requests are counted


def test_greedy_generation_logprobs_are_the_models(srv: ChatServer, reference: Any) -> None:
    r = chat(srv, max_tokens=6, logprobs=True, top_logprobs=5, extra_body=AS_IDS)
    content = r.choices[0].logprobs.content
    ids = token_ids(content)
    prompt, rows = reference_rows(reference, USER, ids)
    check_logprobs(content, ids, rows, 5)
    assert ids == rows.argmax(dim=-1).tolist()  # greedy
    assert [e.token for e in content] == [e.top_logprobs[0].token for e in content]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt), len(ids))
    assert r.usage.total_tokens == len(prompt) + len(ids)
    assert r.choices[0].finish_reason == "length" and len(ids) == 6

    text = chat(srv, max_tokens=6, logprobs=True, top_logprobs=5)  # without the extension
    plain = text.choices[0].logprobs.content
    assert [e.logprob for e in plain] == [e.logprob for e in content]
    assert [e.token for e in plain] == [reference[1].decode([i]) for i in ids]
    raw = b"".join(bytes(e.bytes) for e in plain)
    assert raw.decode(errors="replace") == text.choices[0].message.content
    assert r.choices[0].message.content == text.choices[0].message.content
    assert chat(srv, max_tokens=2).choices[0].logprobs is None
    assert len(srv.stats.paid_bodies) == 3


def test_scripted_tool_call_round_trips(srv: ChatServer, reference: Any) -> None:
    r = chat(srv, tools=TOOLS, max_tokens=64, logprobs=True, top_logprobs=2, extra_body=AS_IDS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == CALL["name"]
    assert json.loads(call.function.arguments) == CALL["arguments"]

    ids = token_ids(choice.logprobs.content)
    tok = reference[1]
    assert ids == tok.encode(assistant_text({"tool_calls": [CALL]}), add_special_tokens=False) + [
        tok.eos_token_id]
    _, rows = reference_rows(reference, USER, ids, TOOLS)  # teacher-forced under the model
    check_logprobs(choice.logprobs.content, ids, rows, 2)
    assert r.usage.completion_tokens == len(ids)

    # The turn the script stands for is exactly what the chat template renders for it.
    history = [*USER, choice.message.model_dump(exclude_none=True)]
    prompt = tok.apply_chat_template(USER, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    rendered = tok.apply_chat_template([*USER, {**history[1], "tool_calls": [
        {**call.model_dump(), "function": {"name": CALL["name"], "arguments": CALL["arguments"]}}
    ]}], tools=TOOLS, tokenize=False)
    assert rendered == prompt + tok.decode(ids) + "\n"

    history.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'})
    follow = chat(srv, messages=history, max_tokens=2)  # history with a tool call renders
    assert follow.choices[0].message.tool_calls is None and srv.stats.paid == 2


def test_scripted_text_stops_at_eos_or_is_cut(srv: ChatServer) -> None:
    said = [{"role": "user", "content": "script: Hello, how are you?"}]
    r = chat(srv, messages=said, max_tokens=32, logprobs=True, extra_body=AS_IDS)
    assert r.choices[0].message.content == "Hello, how are you?"
    assert r.choices[0].finish_reason == "stop"
    assert token_ids(r.choices[0].logprobs.content)[-1] == srv.tokenizer.eos_token_id
    cut = client(srv).chat.completions.create(model=MODEL, messages=said,
                                              max_completion_tokens=2)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2


FAULTS = [
    (("429", 0.25), openai.RateLimitError, "rate_limit_exceeded"),
    (("429_quota",), openai.RateLimitError, "insufficient_quota"),
    (("500",), openai.InternalServerError, "internal_error"),
    (("503",), openai.InternalServerError, "service_unavailable"),
    (("401",), openai.AuthenticationError, "invalid_api_key"),
    (("404",), openai.NotFoundError, "model_not_found"),
    (("reset",), openai.APIConnectionError, None),
    (("truncated",), openai.APIConnectionError, None),
    (("stall", 10), openai.APITimeoutError, None),
]


@pytest.mark.parametrize(("fault", "error", "code"), FAULTS, ids=[f[0][0] for f in FAULTS])
def test_each_fault_raises_the_clients_error(srv: ChatServer, fault: tuple, error: type,
                                             code: str | None) -> None:
    srv.faults = [fault]
    started = time.monotonic()
    with pytest.raises(error) as caught:
        timeout = 0.5 if fault[0] == "stall" else 5.0
        client(srv, timeout=timeout).chat.completions.create(model=MODEL, messages=USER,
                                                             max_tokens=2)
    assert time.monotonic() - started < 4
    assert type(caught.value) is error  # e.g. a reset is not reported as a timeout
    if code is not None:
        assert caught.value.code == code
    if fault[0] == "429":
        assert caught.value.response.headers["retry-after"] == "0.25"
    assert chat(srv, max_tokens=1).choices[0].finish_reason == "length"  # the next one is served
    deadline = time.monotonic() + 3
    while srv.stats.in_flight and time.monotonic() < deadline:  # a stall ends when its client goes
        time.sleep(0.02)
    stats = srv.stats
    assert (stats.requests, stats.paid, stats.in_flight) == (2, 1, 0)
    assert stats.faults == {fault[0]: 1} and srv.faults == []
    assert stats.abandoned == (fault[0] == "stall") and stats.errors == []


def test_retry_after_is_honoured_and_nothing_is_paid_twice(srv: ChatServer) -> None:
    srv.faults = [("429", 0.4), ("503",)]
    r = client(srv, max_retries=3).chat.completions.create(model=MODEL, messages=USER,
                                                           max_tokens=1)
    assert r.choices[0].message is not None
    arrivals = srv.stats.arrivals
    assert len(arrivals) == 3 and arrivals[1] - arrivals[0] >= 0.4
    assert (srv.stats.paid, srv.stats.statuses[429], srv.stats.statuses[503]) == (1, 1, 1)


def test_concurrency_and_callable_faults_are_counted(srv: ChatServer) -> None:
    srv.faults = lambda index: ("stall", 1.0) if index < 4 else ("500",)
    bodies = [[{"role": "user", "content": f"question {n}"}] for n in range(4)]
    threads = [threading.Thread(target=chat, args=(srv, b, 2)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    with pytest.raises(openai.InternalServerError):
        chat(srv)
    stats = srv.stats
    assert (stats.requests, stats.paid, stats.max_in_flight) == (5, 4, 4)
    assert stats.faults == {"stall": 4, "500": 1}
    paid = sorted(b["messages"][0]["content"] for b in stats.paid_bodies)
    assert paid == sorted(b[0]["content"] for b in bodies)  # each paid exactly once


def test_auth_model_and_validation_errors(srv: ChatServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(openai.AuthenticationError) as caught:
            client(srv, api_key="sk-wrong").chat.completions.create(model=MODEL, messages=USER)
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.NotFoundError) as caught:
            client(srv).chat.completions.create(model="gpt-9", messages=USER)
        assert caught.value.code == "model_not_found" and "gpt-9" in caught.value.message
        with pytest.raises(openai.BadRequestError):
            chat(srv, logprobs=True, top_logprobs=21)
    assert KEY not in caplog.text and "sk-wrong" not in caplog.text
    assert srv.stats.paid == 0 and srv.stats.statuses == {401: 1, 404: 1, 400: 1}


def test_echo_mode_budget_and_prompt_shutdown() -> None:
    with ChatServer(echo=True, api_key=KEY, model_name=MODEL, max_requests=3) as srv:
        c = client(srv)
        r = c.chat.completions.create(model=MODEL, messages=USER, logprobs=True, top_logprobs=1,
                                      extra_body=AS_IDS)
        assert r.choices[0].message.content == "Hello from echo."
        assert [e.token for e in r.choices[0].logprobs.content] == ["token_id:0", "token_id:1", "token_id:2"]
        started = time.monotonic()
        for _ in range(2):
            c.chat.completions.create(model=MODEL, messages=USER)
        assert time.monotonic() - started < 1
        with pytest.raises(openai.InternalServerError) as caught:
            c.chat.completions.create(model=MODEL, messages=USER)
        assert caught.value.status_code == 503 and srv.stats.paid == 3
        closing = time.monotonic()
    assert time.monotonic() - closing < 3 and not srv._thread.is_alive()
