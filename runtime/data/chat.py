"""Chat samples rendered with a chat template, their character spans, and per-token masks.

Owns: the sandboxed Jinja environment chat templates run in (set up as transformers'
``apply_chat_template`` sets it up, replicated here rather than imported: those helpers are private
and change between versions), the assistant-turn spans (found by rendering prefixes), the tool-call
name / argument spans inside them, the integration spans of the final answer, and the masks over a
fast tokenizer's tokens. Validation lives in ``chat_checks``; the rules are in docs/chat_data.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .chat_checks import Span, integration_spans, integration_values, parse_arguments

MASKS = ("loss_mask", "tool_name_mask", "json_args_mask", "integration_mask")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(RuntimeError):
    """A template that does not compile, fails or is refused by the sandbox, or cannot be split into turns."""


# -- the environment (transformers/utils/chat_template_utils.py `_cached_compile_jinja_template`) ----

class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body unchanged (transformers uses it to track
    assistant text; the spans here come from prefix rendering instead)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _TemplateDict:
    """``dict`` for templates without dict's class attributes."""
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` refusing underscore-prefixed attributes."""
    def __init__(*args, **kwargs):  # noqa: N805  (jinja's signature trick, so namespace(self=...) works)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot store underscore-prefixed attributes on a "
                                                  f"namespace, but got {name!r}")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_Namespace)
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """Rebuild JSON-like data out of plain types, as transformers does before a template sees it."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for typ, plain in ((str, str.__str__), (int, int.__int__), (float, float.__float__)):
        if isinstance(value, typ):  # subclasses (enums, numpy scalars) lose their extra methods
            return plain(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def prepare_messages(messages: list[dict], arguments_as_dict: bool = False) -> list[dict]:
    """What the template sees: None-valued keys dropped, plain data, reasoning aliased (``reasoning_content`` /
    ``thinking``), as ``apply_chat_template`` does. ``arguments_as_dict`` parses each call's JSON arguments
    into an object first (for templates that expect objects and apply ``tojson``)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if arguments_as_dict and m.get("tool_calls"):
            m["tool_calls"] = [_parsed_call(c) for c in m["tool_calls"]]
        m = _plain(m)
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _parsed_call(call: dict) -> dict:
    try:
        args = parse_arguments(call["function"]["arguments"])
    except (ValueError, KeyError, TypeError):
        return call
    return {**call, "function": {**call["function"], "arguments": args}}


class ChatTemplate:
    """A compiled chat template; ``name`` (a path, ``<tokenizer>.chat_template`` or a hash) names it in errors."""

    def __init__(self, source: str, name: str | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError(f"{name or 'chat template'}: empty or not a string")
        self.source = source
        self.name = name or f"chat template sha256:{hashlib.sha256(source.encode()).hexdigest()[:12]}"
        try:
            self._template = _compile(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"{self.name}: syntax error at line {exc.lineno}: {exc.message}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        return cls(Path(path).read_text(encoding="utf-8"), name=str(path))

    @classmethod
    def from_tokenizer(cls, tokenizer, tools: list | None = None) -> ChatTemplate:
        """The tokenizer's template; of named templates, ``tool_use`` when there are tools, else ``default``."""
        source, label = tokenizer.chat_template, f"{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}.chat_template"
        if isinstance(source, dict):
            key = "tool_use" if tools is not None and "tool_use" in source else "default"
            if key not in source:
                raise ChatTemplateError(f"{label}: several templates {sorted(source)} and no 'default'")
            source, label = source[key], f"{label}[{key!r}]"
        if source is None:
            raise ChatTemplateError(f"{label}: the tokenizer has no chat template")
        return cls(source, name=label)

    def render(self, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False,
               prepared: bool = False, **kwargs) -> str:
        """The text ``tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, ...)`` gives
        (pass the tokenizer's ``special_tokens_map`` in ``kwargs``, as it does)."""
        msgs = messages if prepared else prepare_messages(messages)
        try:
            return self._template.render(messages=msgs, tools=_plain(tools), documents=None,
                                         add_generation_prompt=add_generation_prompt, **_plain(kwargs))
        except jinja2.exceptions.SecurityError as exc:
            raise ChatTemplateError(f"{self.name}: refused by the sandbox: {exc}") from exc
        except Exception as exc:  # noqa: BLE001  (raise_exception, undefined values, type errors in the template)
            raise ChatTemplateError(f"{self.name}: rendering failed: {type(exc).__name__}: {exc}") from exc


def folder_chat_template(tokenizer: str | Path) -> str | None:
    """The tokenizer folder's chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
    `chat_template` (a string, or the template named `default` of a list); None when it has none."""
    path = Path(tokenizer) / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    cfg = Path(tokenizer) / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) and value else None


# -- spans ---------------------------------------------------------------------------------------

def _argument_forms(raw: str) -> list[tuple[str, int]]:
    """(text to look for, characters to trim at each end for the span), in the order tried."""
    forms = [(raw, 0)]
    try:
        obj = parse_arguments(raw)
        for kw in ({}, {"separators": (",", ":")}, {"sort_keys": True}, {"sort_keys": True, "separators": (",", ":")}):
            forms.append((json.dumps(obj, ensure_ascii=False, **kw), 0))
    except ValueError:
        pass
    forms.append((json.dumps(raw, ensure_ascii=False), 1))  # a template applying tojson to the string
    return [(t, trim) for k, (t, trim) in enumerate(forms) if t and t not in [f for f, _ in forms[:k]]]


def _call_spans(text: str, a: int, b: int, turn: dict, where: int, spans: dict, errors: list) -> None:
    """Each call's arguments (the first form of ``_argument_forms`` found after the previous call), and its
    name (its last occurrence between the previous call and these arguments, else the first after them)."""
    cursor = a
    for j, call in enumerate(turn.get("tool_calls") or []):
        name, raw = call["function"]["name"], call["function"]["arguments"]
        args = next(((at + trim, at + len(form) - trim) for form, trim in _argument_forms(raw)
                     if (at := text.find(form, cursor, b)) >= 0), None)
        if args is None:
            errors.append(("json_args_mask", f"messages[{where}].tool_calls[{j}]: arguments not found in the turn"))
            at = text.find(name, cursor, b) if name else -1
        else:
            spans["json_args_mask"].append(args)
            at = text.rfind(name, cursor, args[0]) if name else -1
            at = text.find(name, args[1], b) if at < 0 and name else at
            cursor = args[1]
        if at < 0:
            errors.append(("tool_name_mask", f"messages[{where}].tool_calls[{j}]: name {name!r} not found in the turn"))
        else:
            spans["tool_name_mask"].append((at, at + len(name)))
            cursor = max(cursor, at + len(name))


def _divergence(template: ChatTemplate, what: str, shorter: str, longer: str) -> ChatTemplateError:
    at = next((k for k, (x, y) in enumerate(zip(shorter, longer)) if x != y), min(len(shorter), len(longer)))
    return ChatTemplateError(f"{template.name}: {what} is not a prefix of the longer rendering (they differ at "
                             f"character {at}: {shorter[at:at + 40]!r} vs {longer[at:at + 40]!r}); this template "
                             "renders a turn differently once later turns follow, so turns cannot be cut out of it")


@dataclass
class ChatSpans:
    text: str                         # the whole conversation as the template renders it
    spans: dict[str, list[Span]]      # character spans per mask name (MASKS)
    errors: list[tuple[str, str]]     # (mask, what) for spans the rules could not locate


def find_spans(template: ChatTemplate, messages: list[dict], tools: list | None = None, *,
               arguments_as_dict: bool = False, **kwargs) -> ChatSpans:
    """Render the conversation and find every assistant turn (loss), tool-call name and arguments, and the
    integration spans of the final answer. Raises ChatTemplateError when prefixes do not line up."""
    msgs = prepare_messages(messages, arguments_as_dict)
    full = template.render(msgs, tools, prepared=True, **kwargs)
    spans: dict[str, list[Span]] = {m: [] for m in MASKS}
    errors: list[tuple[str, str]] = []
    last = None
    for i, m in enumerate(msgs):
        if m.get("role") != "assistant":
            continue
        prefix = template.render(msgs[:i], tools, add_generation_prompt=True, prepared=True, **kwargs)
        upto = template.render(msgs[:i + 1], tools, prepared=True, **kwargs)
        if not upto.startswith(prefix):
            raise _divergence(template, f"messages[:{i}] with the generation prompt", prefix, upto)
        if not full.startswith(upto):
            raise _divergence(template, f"messages[:{i + 1}]", upto, full)
        a, b = len(prefix), len(upto)
        spans["loss_mask"].append((a, a + len(upto[a:].rstrip())))
        _call_spans(full, a, b, messages[i], i, spans, errors)
        last = (i, a, b)
    if last and last[0] == len(msgs) - 1 and not msgs[-1].get("tool_calls") and any(
            m.get("role") == "tool" for m in msgs):
        content = msgs[-1].get("content")
        if isinstance(content, str) and content.strip():
            i, a, b = last
            at, body = full.rfind(content, a, b), content
            if at < 0:
                body = content.strip()
                at = full.rfind(body, a, b)
            if at < 0:
                errors.append(("integration_mask", f"messages[{i}]: the final answer is not in its rendered turn verbatim"))
            else:
                spans["integration_mask"] += [(at + x, at + y) for x, y in integration_spans(body, integration_values(msgs))]
    return ChatSpans(full, spans, errors)


# -- masks ---------------------------------------------------------------------------------------

@dataclass
class ChatEncoding:
    text: str
    input_ids: list[int]
    masks: dict[str, list[int]]       # MASKS -> 0/1 per position of input_ids
    spans: dict[str, list[Span]]
    alignment_errors: dict[str, int]  # per mask: spans not located, no token covers, or tokens not decoding to them
    errors: list[tuple[str, str]]     # (mask, what) for spans not located
    roundtrip_ok: bool                # decode(input_ids) == text


def overlapping(offsets: list[Span], a: int, b: int) -> list[int]:
    """Indices of the tokens whose characters overlap [a, b) (zero-width tokens never do)."""
    return [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]


def encode_chat(sample: dict, tokenizer, template: ChatTemplate | None = None, *, arguments_as_dict: bool = False,
                **template_kwargs) -> ChatEncoding:
    """Token ids of the rendered conversation (no extra special tokens: the template writes them, as with
    ``apply_chat_template(tokenize=True)``) and the four masks, 1 on tokens overlapping a span."""
    tools = sample.get("tools") or None
    template = template or ChatTemplate.from_tokenizer(tokenizer, tools)
    kwargs = {**tokenizer.special_tokens_map, **template_kwargs}
    found = find_spans(template, sample["messages"], tools, arguments_as_dict=arguments_as_dict, **kwargs)
    enc = tokenizer(found.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    masks = {m: [0] * len(ids) for m in MASKS}
    align = {m: sum(e[0] == m for e in found.errors) for m in MASKS}
    for m in MASKS:
        for a, b in found.spans[m]:
            hit = overlapping(offsets, a, b)
            decoded = tokenizer.decode([ids[i] for i in hit], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
            if not hit or found.text[a:b] not in decoded:
                align[m] += 1
            for i in hit:
                masks[m][i] = 1
    roundtrip = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == found.text
    return ChatEncoding(found.text, ids, masks, found.spans, align, found.errors, roundtrip)
