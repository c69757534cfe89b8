"""Chat samples (runtime/data): drop reasons, rendering equal to apply_chat_template, prefix-found turns,
masks on parallel calls and several rounds, the integration rule, and the template sandbox."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from runtime.data.chat import ChatTemplate, ChatTemplateError, encode_chat, find_spans, prepare_messages
from runtime.data.chat_checks import REASONS, integration_spans, integration_values, is_ready_made, validate_chat

CHATML = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- '# Tools\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
{{- '\n</tools><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}{%- continue %}{%- endif %}
{%- if message.role in ['user', 'system'] %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\n' }}
{%- generation %}
{%- if message.content %}{{- message.content }}{%- endif %}
{%- for tc in message.tool_calls or [] %}
{%- if message.content or not loop.first %}{{- '\n' }}{%- endif %}
{{- '<tool_call>\n{"name": "' + tc.function.name + '", "arguments": ' }}
{%- if tc.function.arguments is string %}{{- tc.function.arguments }}{%- else %}{{- tc.function.arguments | tojson }}{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>' }}
{%- endgeneration %}
{{- '\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- else %}{{- raise_exception('unknown role ' + message.role) }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

# Uses the rest of the environment: namespace, dict(), tojson options, loop controls, special-token kwargs.
EXOTIC = r"""{{ bos_token }}{% set ns = namespace(n=0) %}{% set meta = dict(a=1) %}
{% for m in messages %}
    {% if m.role == 'assistant' %}{% set ns.n = ns.n + 1 %}{% endif %}
[{{ m.role }}#{{ loop.index }}]{{ m.content if m.content is string else '' }}{{ '+' if m.tool_calls is defined }}
{% if m.thinking is defined %}({{ m.thinking }}|{{ m.reasoning_content }}){% endif %}
{% for tc in m.tool_calls or [] %}{{ tc.function | tojson(indent=2, sort_keys=True) }}{% if loop.index > 5 %}{% break %}{% endif %}
{% endfor %}{% if m.role == 'assistant' %}{{ eos_token }}
{% endif %}{% endfor %}{{ tools | tojson if tools else '' }} {{ meta | tojson }} {{ strftime_now('%Y') }}
{% if add_generation_prompt %}[assistant#{{ messages | length + 1 }}]{% endif %}"""

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", "parameters": {
        "type": "object", "required": ["city", "unit"],
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert money (\u20ac <-> $, 'A&B').", "parameters": {
        "type": "object", "required": ["amount", "from", "to"],
        "properties": {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}}}},
]


def user(text):
    return {"role": "user", "content": text}


def call(cid, name, args, raw=None):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": raw or json.dumps(args)}}


def asst(content, *calls):
    return {"role": "assistant", "content": content, **({"tool_calls": list(calls)} if calls else {})}


def tool(cid, result):
    return {"role": "tool", "tool_call_id": cid, "content": result if isinstance(result, str) else json.dumps(result)}


PARIS = {"city": "Paris", "condition": "Sunny", "temp_c": 21.5, "humidity": 80}
OSLO = {"city": "Oslo", "condition": "Rain", "temp_c": 7.25}
SINGLE = [{"role": "system", "content": "You are terse."}, user("Weather in Paris, please."),
          asst("Checking.", call("c1", "get_weather", {"city": "Paris", "unit": "c"})), tool("c1", PARIS),
          asst("It is sunny and 21.5 degrees in Paris.")]
PARALLEL = [user("Paris and Oslo weather?"),
            asst(None, call("a", "get_weather", {"city": "Paris", "unit": "c"}),
                 call("b", "get_weather", {"unit": "c", "city": "Oslo"}, raw='{"unit":"c","city":"Oslo"}')),
            tool("a", PARIS), tool("b", OSLO), asst("Paris: Sunny, 21.5. Oslo: rain, 7.25.")]
MULTI = [user("Weather in Paris, and 100 USD in EUR?"),
         asst("First the weather.", call("w", "get_weather", {"city": "Paris", "unit": "c"})), tool("w", PARIS),
         asst(None, call("x", "convert_currency", {"amount": 100, "from": "USD", "to": "EUR"})),
         tool("x", {"amount": 92.5, "currency": "EUR"}),
         asst("Sunny in Paris; 100 USD is 92.5 EUR."), user("Thanks! And in Oslo?"), asst("I would have to check.")]
CONTROL = [{"role": "system", "content": "Be kind."}, user("Hello!"), {**asst("Hi."), "tool_calls": None}, user("Bye"),
           {**asst("Goodbye."), "reasoning": "Be polite."}]  # None keys are dropped; reasoning is aliased
CONVERSATIONS = {"single": SINGLE, "parallel": PARALLEL, "multi": MULTI, "control": CONTROL}


def sample(messages, kind="tool", **kw):
    return {"id": "s1", "kind": kind, "messages": copy.deepcopy(messages), "tools": TOOLS, "pii": [], "fixtures": {},
            **kw}


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [json.dumps(c) for c in CONVERSATIONS.values()] + [json.dumps(TOOLS)]
    raw.train_from_iterator(corpus * 3, trainer=trainer)
    t = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                pad_token="<|endoftext|>", chat_template=CHATML)
    t.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    return t


def runs(tok, enc, mask):
    """Decoded text of each run of consecutive 1s in a mask."""
    out, cur = [], []
    for i, m in zip(enc.input_ids, enc.masks[mask]):
        if m:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return [tok.decode(r, skip_special_tokens=False) for r in out]


# -- validation -----------------------------------------------------------------------------------


def test_valid_samples_pass_and_kinds():
    for name, msgs in CONVERSATIONS.items():
        assert validate_chat(sample(msgs, "control" if name == "control" else "tool")) is None, name
    assert is_ready_made(sample(SINGLE)) and not is_ready_made(sample(SINGLE[:2]))
    seen = set()
    assert validate_chat(sample(SINGLE), seen) is None
    assert validate_chat(sample(SINGLE), seen).reason == "duplicate_id"


def _mutate(msgs, i, **changes):
    msgs = copy.deepcopy(msgs)
    msgs[i].update(changes)
    return msgs


CASES = [
    ("bad_schema", sample(SINGLE, kind="weird"), "'kind'"),
    ("bad_schema", sample(_mutate(SINGLE, 2, tool_calls=[{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}])), "messages[2].tool_calls[0]"),
    ("bad_schema", sample(SINGLE[:4]), "last turn is a tool turn"),
    ("bad_schema", sample(_mutate(SINGLE, 1, content=[{"type": "text", "text": "x"}])), "messages[1].content"),
    ("pii_echoed", sample(_mutate(SINGLE, 4, content="Sure, ALICE SMITH."), pii=["Alice Smith"]), "messages[4]"),
    ("pii_echoed", sample(_mutate(SINGLE, 2, tool_calls=[call("c1", "get_weather", {"city": "Al\u00edce", "unit": "c"})]),
                          pii=["al\u00edce"]), "messages[2]"),
    ("unknown_tool", sample(_mutate(SINGLE, 2, tool_calls=[call("c1", "get_wether", {})])), "call 0"),
    ("unknown_tool", sample(SINGLE, fixtures={"nope": 1}), "fixtures['nope']"),
    ("bad_json", sample(_mutate(SINGLE, 2, tool_calls=[call("c1", "get_weather", None, raw='{"city": "Paris"')])),
     "call 0 (messages[2].tool_calls[0], 'get_weather')"),
    ("bad_json", sample(_mutate(SINGLE, 2, tool_calls=[call("c1", "get_weather", None, raw='{"city": NaN}')])), "NaN"),
    ("schema_violation", sample(_mutate(SINGLE, 2, tool_calls=[call("c1", "get_weather", {"city": "Paris"})])),
     "call 0 (messages[2].tool_calls[0], 'get_weather'): at $: 'unit' is a required property"),
    ("schema_violation", sample(_mutate(PARALLEL, 1, tool_calls=[PARALLEL[1]["tool_calls"][0], call(
        "b", "get_weather", {"city": "Oslo", "unit": "kelvin"})])), "call 1 (messages[1].tool_calls[1], 'get_weather'): at $.unit"),
    ("schema_violation", sample(_mutate(MULTI, 3, tool_calls=[call("x", "convert_currency", {
        "amount": "100", "from": "USD", "to": "EUR"})])), "call 1 (messages[3].tool_calls[0], 'convert_currency'): at $.amount"),
    ("schema_violation", sample(_mutate(SINGLE, 2, tool_calls=[call("c1", "get_weather", None, raw="[1]")])), "at $"),
    ("orphan_tool_result", sample(_mutate(SINGLE, 3, tool_call_id="zz")), "messages[3]"),
    ("orphan_tool_result", sample(PARALLEL[:4] + [tool("a", "again")] + PARALLEL[4:]), "messages[4]"),
    ("unanswered_call", sample(PARALLEL[:3] + PARALLEL[4:]), "'b'"),
    ("unanswered_call", sample(SINGLE[:3]), "'c1'"),
    ("no_fixture", sample(SINGLE[:4] + [asst("ok"), user("again?")], fixtures={"convert_currency": 1}), "call 0"),
    ("no_fixture", sample(SINGLE[:2]), "without fixtures"),
    ("control_with_tool_call", sample(SINGLE, kind="control"), "call 0"),
    ("tool_kind_without_call", sample(CONTROL, kind="tool"), "ready-made"),
]


@pytest.mark.parametrize("reason,smp,detail", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_drop_reasons(reason, smp, detail):
    drop = validate_chat(smp)
    assert drop is not None and (drop.reason, detail in drop.detail) == (reason, True), drop
    assert reason in REASONS


def test_fixtures_and_pii_scope():
    prompt = SINGLE[:4] + [asst("ok"), user("again?")]
    fixtures = {"get_weather": [{"arguments": {"city": "Paris", "unit": "c"}, "result": PARIS}]}
    assert validate_chat(sample(prompt, fixtures=fixtures)) is None
    fixtures["get_weather"][0]["arguments"]["unit"] = "f"  # the list form must match the arguments
    assert validate_chat(sample(prompt, fixtures=fixtures)).reason == "no_fixture"
    assert validate_chat(sample(SINGLE, pii=["paris, please"])) is None  # in the user turn only
    bare = {"id": "b", "kind": "control", "messages": [user("hi"), asst("hello")]}  # tools, pii, fixtures optional
    assert validate_chat(bare) is None
    remote = copy.deepcopy(TOOLS)
    remote[0]["function"]["parameters"] = {"$ref": "https://example.com/schema.json"}  # never fetched
    assert validate_chat(sample(SINGLE, tools=remote)).reason == "bad_schema"


# -- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("source", ["chatml", "exotic"])
def test_render_equals_apply_chat_template(tok, name, source):
    msgs, tmpl = CONVERSATIONS[name], {"chatml": CHATML, "exotic": EXOTIC}[source]
    tools = None if name == "control" else TOOLS
    t = ChatTemplate(tmpl)
    for sub in (msgs, msgs[:2], msgs[:-1]):
        for gen in (False, True):
            want = tok.apply_chat_template(sub, tools=tools, chat_template=tmpl, tokenize=False, add_generation_prompt=gen)
            assert t.render(sub, tools, add_generation_prompt=gen, **tok.special_tokens_map) == want
    as_dicts = prepare_messages(msgs, arguments_as_dict=True)
    want = tok.apply_chat_template(as_dicts, tools=tools, chat_template=tmpl, tokenize=False)
    assert t.render(as_dicts, tools, **tok.special_tokens_map) == want
    assert ChatTemplate.from_tokenizer(tok).render(msgs, tools, **tok.special_tokens_map) == tok.apply_chat_template(
        msgs, tools=tools, tokenize=False)


@pytest.mark.parametrize("src,expect", [
    ("{{ ''.__class__.__mro__ }}", "refused by the sandbox"),
    ("{% set x = messages.append(1) %}x", "refused by the sandbox"),
    ("{% set x = messages[0].update({'role': 'system'}) %}x", "refused by the sandbox"),
    ("{% set ns = namespace(_secret=1) %}x", "refused by the sandbox"),
    ("{{ cycler.__init__.__globals__ }}", "refused by the sandbox"),
    ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
])
def test_sandbox(src, expect):
    msgs = copy.deepcopy(SINGLE)
    with pytest.raises(ChatTemplateError, match=expect) as err:
        ChatTemplate(src, name="hostile.jinja").render(msgs)
    assert "hostile.jinja" in str(err.value) and msgs == SINGLE


def test_template_errors_name_the_template(tmp_path, tok):
    path = tmp_path / "counts.jinja"
    path.write_text("{{ messages | length }} turns\n" + CHATML)
    with pytest.raises(ChatTemplateError, match=r"counts\.jinja: messages\[:1\] .* not a prefix"):
        find_spans(ChatTemplate.from_file(path), SINGLE[1:], TOOLS)
    named = SimpleNamespace(chat_template={"default": "plain", "tool_use": "tools"}, name_or_path="t")
    assert ChatTemplate.from_tokenizer(named, TOOLS).render([]) == "tools" and ChatTemplate.from_tokenizer(
        named).render([]) == "plain"
    with pytest.raises(ChatTemplateError, match="syntax error"):
        ChatTemplate("{% for %}", name="broken")
    silent = ChatTemplate(CHATML.replace('", "arguments": \' }}', '"}\' }}').replace("{{- tc.function.arguments }}", ""))
    enc = encode_chat(sample(SINGLE), tok, silent)  # arguments not rendered: reported, not raised
    assert enc.errors == [("json_args_mask", "messages[2].tool_calls[0]: arguments not found in the turn")]
    assert enc.alignment_errors["json_args_mask"] == 1 and sum(enc.masks["json_args_mask"]) == 0
    assert [enc.text[x:y] for x, y in enc.spans["tool_name_mask"]] == ["get_weather"]


# -- spans and masks ------------------------------------------------------------------------------


def _check_clean(enc):
    assert enc.roundtrip_ok and not enc.errors and not any(enc.alignment_errors.values()), enc.alignment_errors


def test_loss_only_on_assistant_turns(tok):
    enc = encode_chat(sample(SINGLE), tok)
    _check_clean(enc)
    assert runs(tok, enc, "loss_mask") == [
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call><|im_end|>',
        "It is sunny and 21.5 degrees in Paris.<|im_end|>"]
    for i, (s, e) in enumerate(tok(enc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]):
        inside = any(a <= s and e <= b for a, b in enc.spans["loss_mask"])
        assert enc.masks["loss_mask"][i] == int(inside)  # system, user, tool and headers are 0
    assert "<tool_response>" not in "".join(runs(tok, enc, "loss_mask"))
    assert enc.input_ids == list(tok.apply_chat_template(SINGLE, tools=TOOLS)["input_ids"])


def test_parallel_calls(tok):
    enc = encode_chat(sample(PARALLEL), tok)
    _check_clean(enc)
    text = enc.text
    assert [text[a:b] for a, b in enc.spans["tool_name_mask"]] == ["get_weather", "get_weather"]
    assert [text[a:b] for a, b in enc.spans["json_args_mask"]] == ['{"city": "Paris", "unit": "c"}',
                                                                  '{"unit":"c","city":"Oslo"}']
    assert all("get_weather" in r and len(r) < 16 for r in runs(tok, enc, "tool_name_mask"))
    assert len(runs(tok, enc, "tool_name_mask")) == 2 and len(runs(tok, enc, "json_args_mask")) == 2
    assert [text[a:b] for a, b in enc.spans["integration_mask"]] == ["Paris", "Sunny", "21.5", "Oslo", "rain", "7.25"]


def test_multi_round_and_multi_turn(tok):
    enc = encode_chat(sample(MULTI), tok)
    _check_clean(enc)
    text = enc.text
    assert len(enc.spans["loss_mask"]) == 4 and [text[a:b] for a, b in enc.spans["loss_mask"]][-1] == \
        "I would have to check.<|im_end|>"
    assert [text[a:b] for a, b in enc.spans["tool_name_mask"]] == ["get_weather", "convert_currency"]
    assert [text[a:b] for a, b in enc.spans["json_args_mask"]][1] == '{"amount": 100, "from": "USD", "to": "EUR"}'
    assert enc.spans["integration_mask"] == []  # the last turn restates nothing
    end = encode_chat(sample(MULTI[:6]), tok)
    assert [end.text[a:b] for a, b in end.spans["integration_mask"]] == ["Sunny", "Paris", "92.5", "EUR"]  # 100, USD: call, not result
    assert sum(enc.masks["loss_mask"]) > sum(end.masks["loss_mask"]) > 0


def test_reserialized_arguments(tok):
    compact = _mutate(SINGLE, 2, tool_calls=[call("c1", "get_weather", None, raw='{"unit":"c","city":"Paris"}')])
    enc = encode_chat(sample(compact), tok, arguments_as_dict=True)  # the template writes tojson of the object
    _check_clean(enc)
    assert [enc.text[a:b] for a, b in enc.spans["json_args_mask"]] == ['{"unit": "c", "city": "Paris"}']
    quoting = ChatTemplate(CHATML.replace("{{- tc.function.arguments }}", "{{- tc.function.arguments | tojson }}"))
    enc = encode_chat(sample(compact), tok, quoting)  # tojson of the string: the escaped text inside the quotes
    _check_clean(enc)
    assert [enc.text[a:b] for a, b in enc.spans["json_args_mask"]] == ['{\\"unit\\":\\"c\\",\\"city\\":\\"Paris\\"}']


# -- the integration rule ---------------------------------------------------------------------------


def _restated(answer, *results):
    values = integration_values([tool("t", r) for r in results])
    return [answer[a:b] for a, b in integration_spans(answer, values)]


def test_integration_fires():
    assert _restated("It is sunny and 21.5 degrees in Paris.", PARIS) == ["sunny", "21.5", "Paris"]
    assert _restated("PARIS is SUNNY", PARIS) == ["PARIS", "SUNNY"]  # case-insensitive
    assert _restated("We meet in New York City.", {"a": "New York", "b": "York City"}) == ["New York City"]
    assert _restated("About 21.5 C today, humidity 80%.", "Sunny, 21.5 C, humidity 80") == ["21.5", "80"]
    assert _restated("It is Sunny, 21.5 C, humidity 80 now", "Sunny, 21.5 C, humidity 80") == [
        "Sunny, 21.5 C, humidity 80"]
    assert _restated("Balance: 1200.", {"balance": 1200, "ok": True}) == ["1200"]


def test_integration_does_not_fire(tok):
    assert _restated("About 22 degrees, 60% humidity.", PARIS) == []  # numbers in no result
    assert _restated("100 USD is 92.5 EUR", {"amount": 92.5, "currency": "EUR"}) == ["92.5", "EUR"]  # not 100, USD
    assert _restated("Sunny.", PARIS) == ["Sunny"]  # humidity 80 and temp_c not restated
    assert _restated("In 121 or 21.55 or 21,000 or x21 days", {"n": 21}) == []  # not part of a longer number/word
    assert _restated("Parisian mood", PARIS) == []
    assert _restated("Step 7 is true, ok? No.", {"step": 7, "done": True, "s": "ok", "t": "no", "u": "A"}) == []
    assert integration_values([user("Paris 21.5"), asst("Paris 21.5")]) == []  # only tool results count
    enc = encode_chat(sample(CONTROL, kind="control"), tok)
    assert enc.spans["integration_mask"] == [] and sum(enc.masks["integration_mask"]) == 0
    restating_early = _mutate(SINGLE, 2, content="Paris it is.")  # not the final answer: not marked
    enc = encode_chat(sample(restating_early), tok)
    assert [enc.text[a:b] for a, b in enc.spans["integration_mask"]] == ["sunny", "21.5", "Paris"]
    assert enc.spans["integration_mask"][0][0] > enc.spans["loss_mask"][1][0]
