"""A loopback OpenAI chat-completions server over a real tiny transformers model, for tests.

This module owns:
- ``tiny_teacher(folder)``: a tiny random-init ``LlamaForCausalLM`` plus a byte-level BPE tokenizer
  (with bos/eos/pad and a ChatML-style chat template that renders tools and tool calls), saved
  with ``save_pretrained`` so any transformers loader can open it.
- ``ChatServer``: an aiohttp server on 127.0.0.1 (ephemeral port, own event loop in a background
  thread) speaking ``GET /v1/models`` and ``POST /v1/chat/completions`` the way vLLM does,
  including its ``return_tokens_as_token_ids`` extension (every logprob ``token`` is
  ``"token_id:N"``). Generation is greedy with the real model; logprobs are the model's real
  log-softmax. A ``script`` callable can replace free generation by a fixed assistant turn (text
  or tool calls) whose logprobs are teacher-forced through the same model. Deterministic fault
  injection (``srv.faults``), thread-safe counters (``srv.stats``), a request budget, bounded
  stalls, and an ``echo`` mode without a model for client-overhead benchmarks.

Protocol decisions (where OpenAI and vLLM leave room):
- Only ``n == 1`` and non-streaming requests; sampling parameters are ignored (always greedy).
- The end-of-turn token (eos) that stops generation is part of ``logprobs.content`` and counts in
  ``usage.completion_tokens`` (as in vLLM); it is not part of ``message.content``.
- ``top_logprobs`` are the model's real top k at each step, sorted descending (for a scripted turn
  the forced token need not be among them). ``bytes`` are the token's raw bytes in text mode and,
  as in vLLM, the UTF-8 of ``"token_id:N"`` in token-id mode.
- A scripted turn cut by ``max_tokens`` comes back as plain text with ``finish_reason "length"``
  and no ``tool_calls`` (what a real server's tool parser would do with a cut call).
- Only chat requests are counted and faulted (``/v1/models`` never is). Each chat request takes
  the next fault at arrival, before authentication (a request past ``max_requests`` gets 503 and
  takes none); a faulted request is never "paid" (a stall is answered normally afterwards). A
  request whose client disconnected before its answer is "abandoned", not paid.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Fault = tuple[Any, ...]
FaultSource = Iterable[Fault | None] | Callable[[int], Fault | None]
Script = Callable[[dict[str, Any]], dict[str, Any] | None]

FAULT_KINDS = frozenset(
    {"429", "429_quota", "500", "503", "stall", "truncated", "reset", "401", "404"}
)
SPECIALS = {"bos": "<|bos|>", "eos": "<|im_end|>", "pad": "<|pad|>"}
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}{% if m.content or not loop.first %}\n{% endif %}"
    '<tool_call>{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}'
    "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = """The quick brown fox jumps over the lazy dog. A teacher model answers questions.
Hello, how are you today? I am fine, thank you. What is the weather in Paris?
The weather in Paris is sunny and warm. Tokyo, London, Berlin and Madrid are cities.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
<tool_call>{"name": "search", "arguments": {"query": "distillation"}}</tool_call>
def add(a, b): return a + b  # numbers 0 1 2 3 4 5 6 7 8 9 10 42 100
Students learn from teachers; small models learn from large models by distillation.
user assistant system tool function type object properties string number required
Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber \u00e5 \u65e5\u672c\u8a9e \U0001f600 emoji!
"""


def tiny_teacher(folder: str | Path, *, seed: int = 0, vocab_size: int = 384, extra_specials: tuple[str, ...] = ()) -> Path:
    """Build and save a tiny random Llama chat model and its tokenizer into `folder`; `extra_specials` are more
    special tokens, numbered right after the built-in ones (so a student spec can name them at fixed ids)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(vocab_size, extra_specials)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.3, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _tiny_tokenizer(vocab_size: int, extra_specials: tuple[str, ...] = ()) -> Any:
    """Train a byte-level BPE on the built-in corpus and wrap it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIALS["pad"], SPECIALS["bos"], "<|im_start|>", SPECIALS["eos"], *extra_specials]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=SPECIALS["bos"], eos_token=SPECIALS["eos"],
        pad_token=SPECIALS["pad"], additional_special_tokens=["<|im_start|>", *extra_specials],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes-to-unicode table used by byte-level BPE token strings."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class NoAnswer(Exception):
    """Raised inside a handler when the connection is closed and no answer will be sent."""


class HttpError(Exception):
    """Raised inside a handler to answer with an OpenAI-style error."""

    def __init__(self, status: int, message: str, type_: str, code: str | None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, code), headers


FAULT_ERRORS: dict[str, tuple[int, str, str, str | None]] = {
    "429": (429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    "429_quota": (429, "You exceeded your current quota, please check your plan and billing "
                       "details.", "insufficient_quota", "insufficient_quota"),
    "500": (500, "The server had an error while processing your request.", "server_error",
            "internal_error"),
    "503": (503, "The server is overloaded or not ready yet.", "server_error",
            "service_unavailable"),
    "401": (401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    "404": (404, "The model does not exist or you do not have access to it.",
            "invalid_request_error", "model_not_found"),
}


@dataclass
class ServerStats:
    """Thread-safe counters of what the server saw and answered."""

    requests: int = 0
    paid: int = 0
    abandoned: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    paid_bodies: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def arrive(self) -> int:
        """Count an incoming chat request; returns its 0-based index."""
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrivals.append(time.monotonic())
            return self.requests - 1

    def depart(self, status: int | None) -> None:
        """Count a finished chat request (status None: no HTTP answer was sent)."""
        with self.lock:
            self.in_flight -= 1
            self.statuses[status or "none"] += 1

    def record(self, attr: str, item: Any = None) -> None:
        """Increment counter `attr`, or append `item` to list `attr`, under the lock."""
        with self.lock:
            if item is None:
                setattr(self, attr, getattr(self, attr) + 1)
            else:
                getattr(self, attr).append(item)

    def fault(self, kind: str) -> None:
        """Count one injected fault."""
        with self.lock:
            self.faults[kind] += 1

    def pay(self, body: dict[str, Any]) -> None:
        """Count a request answered 200."""
        with self.lock:
            self.paid += 1
            self.paid_bodies.append(body)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter, taken under the lock."""
        with self.lock:
            return {name: (value.copy() if hasattr(value, "copy") else value)
                    for name, value in self.__dict__.items() if name != "lock"}

    def reset(self) -> None:
        """Zero every counter (requests in flight stay counted)."""
        with self.lock:
            in_flight = self.in_flight
            for name, value in ServerStats().__dict__.items():
                if name != "lock":
                    setattr(self, name, value)
            self.in_flight = self.max_in_flight = in_flight


@dataclass
class Completion:
    """One assistant turn: its token ids, per-step logprob rows, and how it ended."""

    ids: list[int]
    chosen: list[float]
    tops: list[list[tuple[int, float]]]
    finish: str
    text: str
    tool_calls: list[dict[str, Any]] | None = None


class ChatServer:
    """An OpenAI-compatible chat server on 127.0.0.1 over a tiny real model (see module doc)."""

    def __init__(self, model_dir: str | Path | None = None, *, api_key: str = "test-key",
                 model_name: str = "tiny-teacher", script: Script | None = None,
                 echo: bool = False, echo_text: str = "Hello from echo.",
                 max_requests: int = 10_000, max_stall_s: float = 30.0,
                 default_max_tokens: int = 16, max_tokens_cap: int = 256) -> None:
        if model_dir is None and not echo:
            raise ValueError("model_dir is required unless echo=True")
        self.api_key, self.model_name, self.script = api_key, model_name, script
        self.echo, self.echo_text = echo, echo_text
        self.max_requests, self.max_stall_s = max_requests, max_stall_s
        self.default_max_tokens, self.max_tokens_cap = default_max_tokens, max_tokens_cap
        self.stats = ServerStats()
        self._fault_lock = threading.Lock()
        self._faults: deque[Fault | None] | Callable[[int], Fault | None] = deque()
        self._model_lock = threading.RLock()  # tokenizer and model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-model")
        self._token_cache: dict[int, tuple[str, list[int]]] = {}
        self._echo_ids: dict[str, int] = {}
        self._echo_pieces: list[str] = []
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.model = self.tokenizer = None
        if not echo:
            self._load(Path(model_dir))  # type: ignore[arg-type]

    def _load(self, model_dir: Path) -> None:
        """Load the model (float32, eval) and tokenizer."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self._byte_of = _byte_decoder()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread = threading.Thread(target=self._serve, name="chat-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("chat server did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("chat server failed to start") from self._startup_error
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(5)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _serve(self) -> None:
        """Thread body: start the site, signal readiness, run the loop until stopped."""
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as error:  # noqa: BLE001 - reported to __enter__
            self._startup_error = error
        self._ready.set()
        if self._startup_error is None:
            loop.run_forever()
        loop.close()

    async def _start(self) -> None:
        """Build the app and listen on an ephemeral loopback port."""
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    # -- faults -----------------------------------------------------------------------------

    @property
    def faults(self) -> list[Fault | None] | Callable[[int], Fault | None]:
        """Faults still queued (or the callable of request index)."""
        with self._fault_lock:
            return self._faults if callable(self._faults) else list(self._faults)

    @faults.setter
    def faults(self, source: FaultSource) -> None:
        if not callable(source):
            source = [None if f is None else tuple(f) for f in source]
            for fault in source:
                _check_fault(fault)
            source = deque(source)
        with self._fault_lock:
            self._faults = source

    def _next_fault(self, index: int) -> Fault | None:
        """The fault for chat request `index`: popped from the queue or asked of the callable."""
        with self._fault_lock:
            if callable(self._faults):
                fault = self._faults(index)
                _check_fault(fault)
                return fault
            return self._faults.popleft() if self._faults else None

    async def _apply_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        """Act out `fault`; returns None when the request should then be answered normally."""
        kind = fault[0]
        self.stats.fault(kind)
        if kind == "stall":
            await self._stall(request, float(fault[1]) if len(fault) > 1 else self.max_stall_s)
            if _gone(request):
                self.stats.record("abandoned")
                raise NoAnswer("client went away during the stall")
            return None
        if kind == "reset":
            _reset(request)
            raise NoAnswer("injected reset")
        if kind == "truncated":
            _truncate(request, json.dumps(_echo_like_body(self.model_name)).encode())
            raise NoAnswer("injected truncation")
        status, message, type_, code = FAULT_ERRORS[kind]
        headers = {"Retry-After": f"{float(fault[1]):g}"} if kind == "429" and len(fault) > 1 else None
        raise HttpError(status, message, type_, code, headers)

    async def _stall(self, request: web.Request, seconds: float) -> None:
        """Sleep up to `seconds` (capped), ending early if the client goes away."""
        deadline = time.monotonic() + min(seconds, self.max_stall_s)
        while time.monotonic() < deadline and not _gone(request):
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    # -- handlers ---------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        """GET /v1/models (and /v1/models/{id})."""
        try:
            self._check_auth(request)
            card = {"id": self.model_name, "object": "model", "created": 0,
                    "owned_by": "modelspec-tests"}
            wanted = request.match_info.get("model")
            if wanted is None:
                return web.json_response({"object": "list", "data": [card]})
            self._check_model(wanted)
            return web.json_response(card)
        except HttpError as error:
            return web.json_response(error.body, status=error.status, headers=error.headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions: count, maybe fault, authenticate, answer."""
        index = self.stats.arrive()
        status: int | None = None
        try:
            response = await self._answer(request, index)
            status = response.status
            return response
        except HttpError as error:
            status = error.status
            return web.json_response(error.body, status=error.status, headers=error.headers)
        except NoAnswer:
            return web.Response()  # the connection is closed: aiohttp drops this quietly
        except Exception as error:  # noqa: BLE001 - surfaced to the client and stats
            self.stats.record("errors", repr(error))
            status = 500
            return web.json_response(error_body(repr(error), "server_error", "internal_error"),
                                     status=500)
        finally:
            self.stats.depart(status)

    async def _answer(self, request: web.Request, index: int) -> web.Response:
        """Everything after counting: budget, fault, auth, validation, generation."""
        if index >= self.max_requests:
            raise HttpError(503, "This test server's request budget is spent.", "server_error",
                            "service_unavailable")
        fault = self._next_fault(index)
        if fault is not None:
            await self._apply_fault(fault, request)
        self._check_auth(request)
        body = await _json_body(request)
        self._check_model(body.get("model"))
        params = _validate(body, self.default_max_tokens, self.max_tokens_cap)
        scripted = self.script(body) if self.script is not None else None
        if self.echo:
            completion = self._echo_completion(scripted, params["max_tokens"])
            prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
            payload = self._response(index, completion, params, prompt_tokens)
        else:  # every tokenizer and model call runs on the one model thread
            payload = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._model_payload, index, body, scripted, params)
        if _gone(request):
            self.stats.record("abandoned")
            raise NoAnswer("client went away")
        self.stats.pay(body)
        return web.json_response(payload)

    def _check_auth(self, request: web.Request) -> None:
        """401 unless `Authorization: Bearer <api_key>` (the header is never logged)."""
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            raise HttpError(401, "Incorrect API key provided.", "invalid_request_error",
                            "invalid_api_key")

    def _check_model(self, model: Any) -> None:
        """404 unless `model` is the served model name."""
        if model != self.model_name:
            raise HttpError(404, f"The model `{model}` does not exist.", "invalid_request_error",
                            "model_not_found")

    # -- the model --------------------------------------------------------------------------

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        """Render `messages` (and `tools`) with the chat template and tokenize."""
        messages = [_template_message(m) for m in body["messages"]]
        text = self.tokenizer.apply_chat_template(
            messages, tools=body.get("tools") or None, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= self.model.config.max_position_embeddings:
            raise HttpError(400, "The prompt is longer than the model's context.",
                            "invalid_request_error", "context_length_exceeded")
        return ids

    def _model_payload(self, index: int, body: dict[str, Any], scripted: dict[str, Any] | None,
                       params: dict[str, Any]) -> dict[str, Any]:
        """Render, generate (or teacher-force) and build the response body, on the model thread."""
        with self._model_lock:
            prompt_ids = self._prompt_ids(body)
            completion = self._complete(prompt_ids, scripted, params["max_tokens"], params["k"])
            return self._response(index, completion, params, len(prompt_ids))

    def _complete(self, prompt_ids: list[int], scripted: dict[str, Any] | None,
                  max_tokens: int, k: int) -> Completion:
        """Greedy generation, or a scripted turn teacher-forced, with per-step log-softmax."""
        room = self.model.config.max_position_embeddings - len(prompt_ids)
        max_tokens = min(max_tokens, room)
        if scripted is None:
            ids, rows = self._greedy(prompt_ids, max_tokens)
        else:
            forced = self.tokenizer.encode(assistant_text(scripted), add_special_tokens=False)
            ids = (forced + [self.tokenizer.eos_token_id])[:max_tokens]
            rows = self.score(prompt_ids, ids)
        return self._finish(ids, rows, k, scripted)

    def _greedy(self, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[Any]]:
        """Argmax decoding with a KV cache until eos or `max_tokens`."""
        import torch

        ids: list[int] = []
        rows: list[Any] = []
        inputs, cache = torch.tensor([prompt_ids]), None
        with torch.inference_mode():
            for _ in range(max_tokens):
                out = self.model(input_ids=inputs, cache=cache, use_cache=True)
                cache = out.cache
                row = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                ids.append(int(row.argmax()))
                rows.append(row)
                if ids[-1] == self.tokenizer.eos_token_id:
                    break
                inputs = torch.tensor([[ids[-1]]])
        return ids, rows

    def score(self, prompt_ids: list[int], ids: list[int]) -> list[Any]:
        """Log-softmax rows predicting each of `ids` after `prompt_ids` (one forward pass)."""
        import torch

        with self._model_lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
        start = len(prompt_ids) - 1
        return list(torch.log_softmax(logits[start:start + len(ids)].float(), dim=-1))

    def _finish(self, ids: list[int], rows: list[Any], k: int,
                scripted: dict[str, Any] | None) -> Completion:
        """Turn ids and logprob rows into a Completion (text, finish reason, tool calls)."""
        import torch

        chosen = [float(row[i]) for row, i in zip(rows, ids)]
        tops = []
        for row in rows:
            values, indices = torch.topk(row, k) if k else (row[:0], row[:0].long())
            tops.append([(int(i), float(v)) for v, i in zip(values, indices)])
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        ended = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        if not ended:
            return Completion(ids, chosen, tops, "length", text)
        if scripted is None:
            return Completion(ids, chosen, tops, "stop", text)
        calls = scripted.get("tool_calls") or None
        return Completion(ids, chosen, tops, "tool_calls" if calls else "stop",
                          scripted.get("content") or "", calls)

    def _echo_completion(self, scripted: dict[str, Any] | None, max_tokens: int) -> Completion:
        """A canned turn without a model: whitespace-led pieces, each with logprob 0."""
        text = assistant_text(scripted) if scripted else self.echo_text
        pieces = re.findall(r"\s*\S+|\s+", text)[:max_tokens]
        with self.stats.lock:
            for piece in pieces:
                if piece not in self._echo_ids:
                    self._echo_ids[piece] = len(self._echo_pieces)
                    self._echo_pieces.append(piece)
        ids = [self._echo_ids[p] for p in pieces]
        chosen, tops = [0.0] * len(ids), [[(i, 0.0)] for i in ids]
        if "".join(pieces) != text:
            return Completion(ids, chosen, tops, "length", "".join(pieces))
        if scripted is None:
            return Completion(ids, chosen, tops, "stop", text)
        calls = scripted.get("tool_calls") or None
        return Completion(ids, chosen, tops, "tool_calls" if calls else "stop",
                          scripted.get("content") or "", calls)

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and raw bytes (specials: their text)."""
        if token_id not in self._token_cache:
            text = self.tokenizer.decode([token_id])
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            raw = (list(text.encode()) if token_id in self.tokenizer.all_special_ids
                   else [self._byte_of[c] for c in piece])
            self._token_cache[token_id] = (text, raw)
        return self._token_cache[token_id]

    # -- the response -----------------------------------------------------------------------

    def _entry(self, token_id: int, logprob: float, as_ids: bool) -> dict[str, Any]:
        """One logprob entry in vLLM's shape (`token_id:N` in token-id mode)."""
        if as_ids:
            token = f"token_id:{token_id}"
            raw = list(token.encode())
        elif self.echo:
            token = self._echo_pieces[token_id]
            raw = list(token.encode())
        else:
            token, raw = self._token(token_id)
        return {"token": token, "logprob": max(logprob, -9999.0), "bytes": raw}

    def _response(self, index: int, c: Completion, params: dict[str, Any],
                  prompt_tokens: int) -> dict[str, Any]:
        """The chat.completion JSON body."""
        logprobs = None
        if params["logprobs"]:
            as_ids = params["as_ids"]
            logprobs = {"content": [
                {**self._entry(i, lp, as_ids),
                 "top_logprobs": [self._entry(t, tlp, as_ids) for t, tlp in top]}
                for i, lp, top in zip(c.ids, c.chosen, c.tops)]}
        message: dict[str, Any] = {"role": "assistant", "content": c.text or None}
        if c.tool_calls:
            message["tool_calls"] = [_openai_tool_call(call, f"call_{index}_{j}")
                                     for j, call in enumerate(c.tool_calls)]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": f"chatcmpl-{index}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                         "finish_reason": c.finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(c.ids),
                      "total_tokens": prompt_tokens + len(c.ids)},
        }


# -- helpers ------------------------------------------------------------------------------------


def assistant_text(turn: dict[str, Any]) -> str:
    """The text a scripted assistant turn stands for, as the chat template renders it."""
    parts = [turn["content"]] if turn.get("content") else []
    for call in turn.get("tool_calls") or []:
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        payload = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
        parts.append(f"<tool_call>{payload}</tool_call>")
    return "\n".join(parts)


def _openai_tool_call(call: dict[str, Any], default_id: str) -> dict[str, Any]:
    """A scripted call in OpenAI's shape: arguments as a JSON string."""
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": call.get("id", default_id), "type": "function",
            "function": {"name": call["name"], "arguments": arguments}}


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """Flatten content parts to text and parse tool-call arguments, as chat templates expect."""
    out = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        out["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = []
    for call in message.get("tool_calls") or []:
        function = dict(call.get("function", {}))
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except ValueError:
                pass
        calls.append({**call, "function": function})
    if calls:
        out["tool_calls"] = calls
    return out


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; 400 when it is not one."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HttpError(400, "The request body is not a JSON object.", "invalid_request_error",
                        "invalid_json")
    return body


def _validate(body: dict[str, Any], default_max: int, cap: int) -> dict[str, Any]:
    """Check the request fields this server honours; 400 on anything it cannot serve."""
    def bad(message: str, param: str) -> HttpError:
        error = HttpError(400, message, "invalid_request_error", "invalid_value")
        error.body["error"]["param"] = param
        return error

    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise bad("`messages` must be a non-empty list.", "messages")
    if body.get("stream"):
        raise bad("Streaming is not supported by this test server.", "stream")
    if body.get("n", 1) not in (1, None):
        raise bad("Only n=1 is supported.", "n")
    max_tokens = next((body[key] for key in ("max_completion_tokens", "max_tokens")
                       if body.get(key) is not None), default_max)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad("`max_tokens` must be a positive integer.", "max_tokens")
    k = body.get("top_logprobs") or 0
    if not isinstance(k, int) or not 0 <= k <= 20:
        raise bad("`top_logprobs` must be an integer from 0 to 20.", "top_logprobs")
    if k and not body.get("logprobs"):
        raise bad("`top_logprobs` requires `logprobs: true`.", "top_logprobs")
    return {"max_tokens": min(max_tokens, cap), "k": k, "logprobs": bool(body.get("logprobs")),
            "as_ids": bool(body.get("return_tokens_as_token_ids"))}


def _echo_like_body(model: str) -> dict[str, Any]:
    """A plausible 200 body, to be cut short by the truncation fault."""
    return {"id": "chatcmpl-truncated", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "cut " * 20},
                         "logprobs": None, "finish_reason": "stop"}]}


def _check_fault(fault: Fault | None) -> None:
    """Reject unknown fault kinds early (a typo would otherwise pass silently)."""
    if fault is not None and (not fault or fault[0] not in FAULT_KINDS):
        raise ValueError(f"unknown fault {fault!r}; kinds: {sorted(FAULT_KINDS)}")


def _gone(request: web.Request) -> bool:
    """Whether the client's connection is already closed."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST and no response."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _truncate(request: web.Request, body: bytes) -> None:
    """Send a 200 whose Content-Length promises more than is sent, cut mid-body, then close."""
    transport = request.transport
    if transport is None:
        return
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + 64}\r\n\r\n").encode()
    transport.write(head + body[: len(body) // 2])
    transport.close()
