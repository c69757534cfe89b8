"""Chat-completions response bodies parsed into typed results, with exact token ids.

Owns: one decoded `/v1/chat/completions` body (hosted OpenAI-style APIs, vLLM, SGLang) as frozen
dataclasses (text, tool calls, finish reason, usage and, per generated position, the chosen token
id, its logprob and the top-k alternatives as (id, logprob)), and the request fields each server
needs before it returns ids (`request_extras`). Sending, storing and caching live elsewhere.

Token ids, never token strings: strings are not unique (byte-fallback pieces and partial UTF-8
tokens all print as "\\ufffd"; added tokens can repeat vocabulary text), so no dict here is keyed
by one. The caller chooses how ids are recovered (`TokenIds`):

- "vllm": `return_tokens_as_token_ids: true` makes every token "token_id:N" (vllm/entrypoints/openai/
  chat_completion/serving.py `_create_chat_logprobs`, `_get_top_logprobs`); anything else is an error.
  vLLM's `bytes` re-encode decoded text with errors="replace" (lossy, never read). The sampled token
  comes first among the alternatives (v1 `_make_logprob_dict`), so when it is outside the top k the
  k-th best is missing. Top-level `prompt_logprobs` (request `prompt_logprobs: k`): null at position
  0, then {"<id>": {"logprob", "rank", "decoded_token"}} with the prompt token's own entry first.
- "sglang": SGLang's OpenAI-style `logprobs.content` has no ids (protocol.py `ChatCompletionTokenLogprob`
  is token, bytes, logprob, top_logprobs; utils.py `to_openai_style_logprobs` even merges alternatives
  with equal text). Ids come from the engine's meta_info, sent when the request sets
  `return_meta_info: true` (non-streaming only; serving_chat.py `_build_chat_response`):
  `choices[].meta_info.output_token_logprobs` = [[logprob, token_id, text], ...], and
  `output_top_logprobs` = per position a list of such triples, or null (tokenizer_manager.py
  `detokenize_logprob_tokens`); a null logprob is -inf. protocol.py's `return_token_ids` ->
  `choices[].token_ids` carries chosen ids only, no alternatives, so it is not used.
- "bytes": hosted APIs send each token's raw UTF-8 `bytes` (OpenAI `logprobs.content[]`: token,
  logprob, bytes, top_logprobs[] of token, logprob, bytes); a `ByteVocab` built from the teacher's
  byte-level tokenizer.json maps them to ids and refuses bytes that two ids share. Not for vLLM or
  SGLang: their `bytes` are re-encoded decoded text, so partial UTF-8 tokens all read as U+FFFD.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's documented range for top_logprobs is 0..20
_PREVIEW_CHARS = 80
_VLLM_TOKEN = re.compile(r"token_id:(\d+)")
_Row = tuple[int, float, list[tuple[int, float]]]  # chosen id, its logprob, alternatives as sent


class TokenIds(str, Enum):
    """How token ids are recovered from a response body (see the module docstring)."""

    VLLM = "vllm"
    SGLANG = "sglang"
    BYTES = "bytes"


class WireError(ValueError):
    """A response body is not what the chosen mode expects; the message names field and position."""


class ByteVocabError(ValueError):
    """Bytes that no id, or several ids, decode to; or a tokenizer.json a ByteVocab cannot read."""


@dataclass(frozen=True)
class ToolCall:
    id: str | None
    name: str
    arguments: str  # the raw JSON text exactly as sent


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when sent


@dataclass(frozen=True)
class TokenLogprobs:
    """Per generated position: the chosen id and logprob, and the alternatives as sent (ragged)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_ids: tuple[tuple[int, ...], ...]
    top_logprobs: tuple[tuple[float, ...], ...]
    requested_top_k: int | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def top_counts(self) -> tuple[int, ...]:
        return tuple(len(ids) for ids in self.top_ids)

    @property
    def short_positions(self) -> tuple[int, ...]:
        """Positions that came with fewer alternatives than requested (empty when k is unknown)."""
        k = self.requested_top_k
        return () if k is None else tuple(i for i, n in enumerate(self.top_counts) if n < k)


@dataclass(frozen=True)
class PromptLogprobs:
    """vLLM prompt logprobs, per prompt position; position 0 has none (None, and empty tuples)."""

    token_ids: tuple[int | None, ...]
    logprobs: tuple[float | None, ...]
    top_ids: tuple[tuple[int, ...], ...]  # every entry vLLM sent, the prompt token's own first
    top_logprobs: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Completion:
    index: int
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: Usage | None
    tokens: TokenLogprobs | None
    prompt: PromptLogprobs | None = None
    reasoning: str | None = None  # message.reasoning_content (DeepSeek, Moonshot, vLLM < 0.10) or message.reasoning (vLLM)


def request_extras(mode: TokenIds | str, top_k: int, *, prompt_top_k: int | None = None,
                   openai_kwargs: bool = False) -> dict[str, Any]:
    """Fields a request needs so that `mode` recovers ids with `top_k` alternatives.

    Flat JSON body fields by default (what TeacherClient.complete takes); openai_kwargs=True nests
    the non-standard ones under `extra_body`, for `client.chat.completions.create(**extras)`.
    SGLang's `return_meta_info` needs stream=false. `prompt_top_k` (vLLM only) adds prompt logprobs.
    """
    mode = _mode(mode)
    _check_top_k(top_k, "top_k")
    extra: dict[str, Any] = {}
    if mode is TokenIds.VLLM:
        extra["return_tokens_as_token_ids"] = True
    if mode is TokenIds.SGLANG:
        extra["return_meta_info"] = True
    if prompt_top_k is not None:
        if mode is not TokenIds.VLLM:
            raise ValueError(f"prompt_top_k: only vLLM returns prompt logprobs, not mode {mode.value!r}")
        _check_top_k(prompt_top_k, "prompt_top_k")
        extra["prompt_logprobs"] = prompt_top_k
    if top_k == 0 and prompt_top_k is None:  # sequence-level KD: no logprobs asked (some APIs refuse the field)
        return {}
    fields: dict[str, Any] = {"logprobs": True, "top_logprobs": top_k}
    if openai_kwargs:
        return {**fields, "extra_body": extra} if extra else fields
    return {**fields, **extra}


def _check_top_k(k: Any, name: str) -> None:
    if type(k) is not int or not 0 <= k <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be an integer in 0..{MAX_TOP_LOGPROBS} (the OpenAI limit), got {k!r}")


def _mode(mode: TokenIds | str) -> TokenIds:
    try:
        return TokenIds(mode)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in TokenIds)
        raise ValueError(f"unknown token-id mode {mode!r}: use one of {allowed}") from None


# GPT-2's byte-to-unicode table, inverted: printable bytes stand for themselves, the others for 256+n.
_PRINTABLE = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
_UNICODE_TO_BYTE = {**{chr(b): b for b in _PRINTABLE},
                    **{chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in _PRINTABLE)}}


@dataclass(frozen=True)
class ByteVocab:
    """bytes -> token id for one tokenizer; bytes that several ids decode to are kept apart, refused."""

    ids: Mapping[bytes, int]
    ambiguous: Mapping[bytes, tuple[int, ...]]

    @classmethod
    def from_token_bytes(cls, token_bytes: Mapping[int, bytes]) -> ByteVocab:
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, data in sorted(token_bytes.items()):
            by_bytes.setdefault(data, []).append(token_id)
        return cls(ids={b: found[0] for b, found in by_bytes.items() if len(found) == 1},
                   ambiguous={b: tuple(found) for b, found in by_bytes.items() if len(found) > 1})

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> ByteVocab:
        """A tokenizers tokenizer.json with a ByteLevel decoder (GPT-2 byte table); added tokens included."""
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if not isinstance(model.get("vocab"), dict):
            raise ByteVocabError(f"{path}: model.vocab is not a token -> id mapping (model type "
                                 f"{model.get('type')!r}); ByteVocab reads BPE and WordLevel vocabularies")
        _check_byte_level(spec, path)
        pieces = {int(i): token for token, i in model["vocab"].items()}
        pieces.update({int(a["id"]): a["content"] for a in spec.get("added_tokens") or []})
        return cls.from_token_bytes({i: _byte_level_bytes(token) for i, token in pieces.items()})

    def id_for(self, data: bytes) -> int:
        if data in self.ids:
            return self.ids[data]
        if data in self.ambiguous:
            both = " and ".join(str(i) for i in self.ambiguous[data])
            raise ByteVocabError(f"bytes {data!r} decode from ids {both}: bytes cannot say which one the server "
                                 "meant; use a server that returns ids (mode 'vllm' or 'sglang')")
        raise ByteVocabError(f"bytes {_preview(data)} are no token of this vocabulary ({len(self.ids)} ids); "
                             "is the ByteVocab built from the teacher's own tokenizer.json?")


def _check_byte_level(spec: dict[str, Any], path: str | Path) -> None:
    kinds, todo = set(), [spec.get("decoder")]
    while todo:
        step = todo.pop()
        if isinstance(step, dict):
            kinds.add(str(step.get("type")))
            todo.extend(step.get("decoders") or [])
    if "ByteLevel" not in kinds:
        raise ByteVocabError(f"{path}: decoder {sorted(kinds)} is not ByteLevel (GPT-2 byte table), so which "
                             "bytes a token stands for is unknown here; use mode 'vllm' or 'sglang' for this teacher")


def _byte_level_bytes(token: str) -> bytes:
    """As tokenizers' ByteLevel decoder: each char through the table, else the token's UTF-8."""
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def parse_completion(body: Any, mode: TokenIds | str, *, vocab: ByteVocab | None = None,
                     top_k: int | None = None) -> Completion:
    """The only choice of a response; `top_k` is what was requested (to report short positions)."""
    completions = parse_completions(body, mode, vocab=vocab, top_k=top_k)
    if len(completions) != 1:
        raise WireError(f"response.choices: expected one choice, got {len(completions)}; use parse_completions")
    return completions[0]


def parse_completions(body: Any, mode: TokenIds | str, *, vocab: ByteVocab | None = None,
                      top_k: int | None = None) -> tuple[Completion, ...]:
    """Every choice of a response, by index; usage and prompt logprobs are shared by all."""
    mode = _mode(mode)
    if top_k is not None:
        _check_top_k(top_k, "top_k")
    if mode is TokenIds.BYTES and vocab is not None and not isinstance(vocab, ByteVocab):
        raise ValueError("mode 'bytes' needs vocab=ByteVocab.from_tokenizer_json(<the teacher's tokenizer.json>)")
    if "error" in (body := _as_dict(body, "response")) or body.get("object") == "error":
        error = body.get("error", body)
        message = error.get("message", error) if isinstance(error, dict) else error
        raise WireError(f"the server answered with an error, not a completion: {_preview(message)}")
    choices = _get(body, "choices", "response", list)
    if not choices:
        raise WireError("response.choices: empty; the server returned no completion")
    reader, usage, prompt = _TokenReader(mode, vocab, top_k), _usage(body), _prompt_logprobs(body)
    parsed = []
    for i, choice in enumerate(choices):
        choice = _as_dict(choice, path := f"choices[{i}]")
        parsed.append(_completion(choice, path, usage, reader.read(choice, path), prompt))
    return tuple(sorted(parsed, key=lambda c: c.index))


def _completion(choice: dict[str, Any], path: str, usage: Usage | None, tokens: TokenLogprobs | None,
                prompt: PromptLogprobs | None) -> Completion:
    message = _get(choice, "message", path, dict)
    calls = _get(message, "tool_calls", f"{path}.message", list, optional=True) or []
    return Completion(index=_get(choice, "index", path, int, optional=True) or 0,
                      content=_get(message, "content", f"{path}.message", str, optional=True),
                      tool_calls=tuple(_tool_call(c, f"{path}.message.tool_calls[{i}]") for i, c in enumerate(calls)),
                      finish_reason=_get(choice, "finish_reason", path, str, optional=True),
                      usage=usage, tokens=tokens, prompt=prompt, reasoning=_reasoning(message, f"{path}.message"))


def _reasoning(message: dict[str, Any], path: str) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        if (text := _get(message, key, path, str, optional=True)) is not None:
            return text
    return None


def _tool_call(call: Any, path: str) -> ToolCall:
    call = _as_dict(call, path)
    if call.get("type", "function") != "function":
        raise WireError(f"{path}.type: only function tool calls are supported, got {_preview(call.get('type'))}")
    function = _get(call, "function", path, dict)
    return ToolCall(id=_get(call, "id", path, str, optional=True),
                    name=_get(function, "name", f"{path}.function", str),
                    arguments=_get(function, "arguments", f"{path}.function", str))


def _usage(body: dict[str, Any]) -> Usage | None:
    if (usage := _get(body, "usage", "response", dict, optional=True)) is None:
        return None
    details = _get(usage, "prompt_tokens_details", "usage", dict, optional=True) or {}
    return Usage(prompt_tokens=_get(usage, "prompt_tokens", "usage", int),
                 completion_tokens=_get(usage, "completion_tokens", "usage", int),
                 cached_tokens=_get(details, "cached_tokens", "usage.prompt_tokens_details", int, optional=True))


@dataclass(frozen=True)
class _TokenReader:
    """Reads one choice's chosen ids, logprobs and alternatives in one mode."""

    mode: TokenIds
    vocab: ByteVocab | None
    top_k: int | None

    def read(self, choice: dict[str, Any], path: str) -> TokenLogprobs | None:
        return self._sglang(choice, path) if self.mode is TokenIds.SGLANG else self._openai(choice, path)

    def _openai(self, choice: dict[str, Any], path: str) -> TokenLogprobs | None:
        logprobs = _get(choice, "logprobs", path, dict, optional=True) or {}
        if (content := _get(logprobs, "content", f"{path}.logprobs", list, optional=True)) is None:
            return None
        rows: list[_Row] = []
        for i, entry in enumerate(content):
            where = f"{path}.logprobs.content[{i}]"
            alts = _get(_as_dict(entry, where), "top_logprobs", where, list, optional=True) or []
            rows.append((*self._pair(entry, where), [self._pair(a, f"{where}.top_logprobs[{j}]")
                                                     for j, a in enumerate(alts)]))
        return self._tokens(rows, f"{path}.logprobs.content")

    def _pair(self, entry: Any, path: str) -> tuple[int, float]:
        entry = _as_dict(entry, path)
        token_id = _vllm_id(entry, path) if self.mode is TokenIds.VLLM else self._bytes_id(entry, path)
        return token_id, _logprob(entry.get("logprob"), f"{path}.logprob")

    def _bytes_id(self, entry: dict[str, Any], path: str) -> int:
        token = entry.get("token")
        if isinstance(token, str) and _VLLM_TOKEN.fullmatch(token):
            raise WireError(f"{path}.token is {token!r}: a vLLM return_tokens_as_token_ids body; "
                            "parse it in mode 'vllm'")
        if (raw := _get(entry, "bytes", path, list, optional=True)) is None:
            raise WireError(f"{path}.bytes: missing or null (token {_preview(token)}), so mode 'bytes' cannot recover "
                            "the token id; use a server that returns ids (mode 'vllm' or 'sglang')")
        if not all(type(b) is int and 0 <= b <= 255 for b in raw):
            raise WireError(f"{path}.bytes: expected integers 0..255, got {_preview(raw)}")
        if self.vocab is None:  # only logprobs need one: a response without them parses without a tokenizer
            raise ValueError("mode 'bytes' needs vocab=ByteVocab.from_tokenizer_json(<the teacher's tokenizer.json>) "
                             "to read logprobs")
        try:
            return self.vocab.id_for(bytes(raw))
        except ByteVocabError as exc:
            raise WireError(f"{path}.bytes (token {_preview(token)}): {exc}") from None

    def _sglang(self, choice: dict[str, Any], path: str) -> TokenLogprobs | None:
        meta = _get(choice, "meta_info", path, dict, optional=True) or {}
        if meta.get("output_token_logprobs") is None:
            if choice.get("logprobs") is not None:
                raise WireError(f"{path}.meta_info.output_token_logprobs: missing although {path}.logprobs is set; "
                                "SGLang sends token ids only there: request return_meta_info=true "
                                "(request_extras('sglang', k))")
            return None
        where = f"{path}.meta_info"
        chosen = _get(meta, "output_token_logprobs", where, list)
        tops = _get(meta, "output_top_logprobs", where, list, optional=True) or [None] * len(chosen)
        if len(tops) != len(chosen):
            raise WireError(f"{where}.output_top_logprobs: {len(tops)} positions for {len(chosen)} output tokens")
        rows: list[_Row] = []
        for i, (triple, alts) in enumerate(zip(chosen, tops)):
            pairs = [_sglang_triple(t, f"{where}.output_top_logprobs[{i}][{j}]") for j, t in enumerate(alts or [])]
            rows.append((*_sglang_triple(triple, f"{where}.output_token_logprobs[{i}]"), pairs))
        return self._tokens(rows, f"{where}.output_top_logprobs")

    def _tokens(self, rows: list[_Row], path: str) -> TokenLogprobs:
        for i, (_, _, pairs) in enumerate(rows):
            ids = [token_id for token_id, _ in pairs]
            if self.top_k is not None and len(ids) > self.top_k:
                raise WireError(f"{path}[{i}]: {len(ids)} alternatives, more than the {self.top_k} requested; "
                                "is top_k right?")
            if len(set(ids)) < len(ids):
                twice = next(t for t in ids if ids.count(t) > 1)
                raise WireError(f"{path}[{i}]: token id {twice} listed twice among the alternatives {_preview(ids)}")
        return TokenLogprobs(token_ids=tuple(r[0] for r in rows), logprobs=tuple(r[1] for r in rows),
                             top_ids=tuple(tuple(p[0] for p in r[2]) for r in rows),
                             top_logprobs=tuple(tuple(p[1] for p in r[2]) for r in rows), requested_top_k=self.top_k)


def _vllm_id(entry: dict[str, Any], path: str) -> int:
    token = entry.get("token")
    if isinstance(token, str) and (m := _VLLM_TOKEN.fullmatch(token)):
        return int(m.group(1))
    raise WireError(f"{path}.token: expected 'token_id:N' (vLLM with return_tokens_as_token_ids=true), got "
                    f"{_preview(token)}; send request_extras('vllm', k), or parse a hosted API's body in mode 'bytes'")


def _sglang_triple(triple: Any, path: str) -> tuple[int, float]:
    if not isinstance(triple, list) or len(triple) not in (2, 3):
        raise WireError(f"{path}: expected [logprob, token_id, text], got {_preview(triple)}")
    return _token_id(triple[1], f"{path}[1]"), _logprob(triple[0], f"{path}[0]", null_is_neg_inf=True)


def _prompt_logprobs(body: dict[str, Any]) -> PromptLogprobs | None:
    if (positions := _get(body, "prompt_logprobs", "response", list, optional=True)) is None:
        return None
    tops = [_prompt_position(entry, f"response.prompt_logprobs[{i}]") for i, entry in enumerate(positions)]
    return PromptLogprobs(token_ids=tuple(t[0][0] if t else None for t in tops),
                          logprobs=tuple(t[0][1] if t else None for t in tops),
                          top_ids=tuple(tuple(p[0] for p in t) for t in tops),
                          top_logprobs=tuple(tuple(p[1] for p in t) for t in tops))


def _prompt_position(entry: Any, path: str) -> list[tuple[int, float]]:
    if entry is None:  # position 0: nothing before it to condition on
        return []
    pairs = []
    for key, value in _as_dict(entry, path).items():
        logprob = _as_dict(value, f"{path}[{key!r}]").get("logprob")
        pairs.append((_token_id(key, f"{path} key {_preview(key)}"), _logprob(logprob, f"{path}[{key!r}].logprob")))
    if not pairs:
        raise WireError(f"{path}: an empty object; only position 0 may be null")
    return pairs


def _get(obj: dict[str, Any], key: str, path: str, kind: type, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise WireError(f"{path}.{key}: {'null' if key in obj else 'missing'}, expected {kind.__name__}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"{path}.{key}: expected {kind.__name__}, got {type(value).__name__} {_preview(value)}")
    return value


def _as_dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{path}: expected a JSON object, got {type(value).__name__} {_preview(value)}")
    return value


def _token_id(value: Any, path: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():  # JSON object keys (prompt_logprobs)
        value = int(value)
    if type(value) is not int or value < 0:
        raise WireError(f"{path}: expected a token id (an integer >= 0), got {_preview(value)}")
    return value


def _logprob(value: Any, path: str, *, null_is_neg_inf: bool = False) -> float:
    if value is None and null_is_neg_inf:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise WireError(f"{path}: expected a number, got {_preview(value)}")
    if value > 1e-4:
        raise WireError(f"{path}: a log probability must be <= 0, got {value!r}")
    return float(value)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else f"{text[:_PREVIEW_CHARS]}... ({len(text)} chars)"
