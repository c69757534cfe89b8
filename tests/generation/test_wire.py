"""runtime.generation.wire: recorded chat-completions bodies (OpenAI, vLLM, SGLang) parsed into exact ids."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from runtime.generation.wire import (
    ByteVocab,
    ByteVocabError,
    TokenIds,
    WireError,
    parse_completion,
    parse_completions,
    request_extras,
)

RESPONSES = Path(__file__).parent / "responses"
CORPUS = ["Hello world", "Hello there", "Hi world \u2014 dash"] * 20


def load(name: str) -> dict:
    return json.loads((RESPONSES / f"{name}.json").read_text(encoding="utf-8"))


def _train(added: list[str]) -> Tokenizer:
    """A tiny byte-level BPE (GPT-2 byte table, all 256 bytes in the alphabet) trained on CORPUS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken(text, normalized=False) for text in added])
    return tok


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Tokenizer, ByteVocab]:
    tok = _train(added=["\u65e5\u672c"])  # an added token whose chars are outside the byte table
    path = tmp_path_factory.mktemp("teacher") / "tokenizer.json"
    path.write_text(tok.to_str(), encoding="utf-8")
    return tok, ByteVocab.from_tokenizer_json(path)


@pytest.fixture(scope="module")
def dup_vocab_path(tmp_path_factory) -> tuple[Tokenizer, Path]:
    tok = _train(added=[" world"])  # an added token with the same bytes as the vocabulary's "Ġworld"
    path = tmp_path_factory.mktemp("dup") / "tokenizer.json"
    path.write_text(tok.to_str(), encoding="utf-8")
    return tok, path


def byte_level(text: str) -> str:
    """tokenizers' own byte-level spelling of text (independent of wire's table)."""
    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text))


def tid(tok: Tokenizer, text: str) -> int:
    token_id = tok.token_to_id(byte_level(text))
    assert token_id is not None, text
    return token_id


def byte_id(tok: Tokenizer, char: str, i: int) -> int:
    """Id of the single-byte token for byte i of char's UTF-8 encoding."""
    return tok.token_to_id(byte_level(char)[i])


# Shape: openai-python src/openai/types/chat/chat_completion.py and chat_completion_token_logprob.py
# (ChatCompletionTokenLogprob: token, bytes, logprob, top_logprobs[TopLogprob: token, bytes, logprob];
# "In rare cases, there may be fewer than the number of requested top_logprobs returned"), usage with
# prompt_tokens_details.cached_tokens (completion_usage.py). Token strings are never read in this mode.


def test_openai_bytes_mode_recovers_ids_from_bytes(teacher):
    tok, vocab = teacher
    got = parse_completion(load("openai_logprobs"), "bytes", vocab=vocab, top_k=3)
    dash = [byte_id(tok, "\u2014", i) for i in range(3)]
    assert got.tokens.token_ids == (tid(tok, "Hello"), tid(tok, " world"), *dash, tid(tok, "!"))
    assert got.tokens.top_ids[0] == (tid(tok, "Hello"), tid(tok, "Hi"), tid(tok, "He"))
    assert got.tokens.top_ids[1] == (tid(tok, " world"), tid(tok, " there"), tid(tok, " dash"))
    assert got.tokens.logprobs[0] == pytest.approx(-0.0112)
    assert got.content == "Hello world\u2014!" and got.finish_reason == "stop" and got.tool_calls == ()
    assert got.usage.prompt_tokens == 19 and got.usage.completion_tokens == 6 and got.usage.cached_tokens == 0
    assert tok.decode(list(got.tokens.token_ids)) == got.content


def test_openai_byte_pieces_of_one_character_map_to_single_byte_tokens(teacher):
    tok, vocab = teacher
    got = parse_completion(load("openai_logprobs"), TokenIds.BYTES, vocab=vocab, top_k=3)
    pieces = got.tokens.token_ids[2:5]
    assert [tok.id_to_token(i) for i in pieces] == list(byte_level("\u2014"))
    assert got.tokens.top_ids[2][1] == tok.token_to_id(byte_level("\ufffd")[0])  # byte 0xEF, first of U+FFFD


def test_fewer_alternatives_than_asked_are_recorded_and_reported(teacher):
    _, vocab = teacher
    tokens = parse_completion(load("openai_logprobs"), "bytes", vocab=vocab, top_k=3).tokens
    assert tokens.top_counts == (3, 3, 3, 2, 3, 3)
    assert tokens.short_positions == (3,)
    assert len(tokens.top_ids[3]) == len(tokens.top_logprobs[3]) == 2
    assert parse_completion(load("openai_logprobs"), "bytes", vocab=vocab).tokens.short_positions == ()


@pytest.mark.parametrize("shown_as", ["\ufffd", "<0xE2>"])  # how partial UTF-8 / byte-fallback tokens print
def test_duplicate_token_strings_with_different_bytes_keep_different_ids(teacher, shown_as):
    tok, vocab = teacher
    body = load("openai_logprobs")
    for alt in body["choices"][0]["logprobs"]["content"][2]["top_logprobs"]:
        alt["token"] = shown_as  # all three strings now equal; only the bytes differ
    ids = parse_completion(body, "bytes", vocab=vocab).tokens.top_ids[2]
    assert len(set(ids)) == 3
    assert ids[:2] == (byte_id(tok, "\u2014", 0), tok.token_to_id(byte_level("\ufffd")[0]))


def test_openai_parallel_tool_calls_with_null_content_and_null_logprobs(teacher):
    _, vocab = teacher
    got = parse_completion(load("openai_tool_calls"), "bytes", vocab=vocab, top_k=3)
    assert got.content is None and got.tokens is None and got.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in got.tool_calls] == [("call_9pw1qnYScqvGrCH58HWCvFH6", "get_weather"),
                                                        ("call_Ljw1bXM3vSaw8tHdTr7AhDgJ", "get_weather")]
    assert got.tool_calls[0].arguments == '{"location": "Paris, France"}'  # raw text, spacing kept
    assert got.tool_calls[1].arguments == '{"location":"Tokyo, Japan","unit":"celsius"}'
    assert got.usage.cached_tokens == 1024


def test_missing_usage_and_null_logprobs_content(teacher):
    _, vocab = teacher
    body = load("openai_logprobs")
    del body["usage"]
    body["choices"][0]["logprobs"] = {"content": None, "refusal": None}
    got = parse_completion(body, "bytes", vocab=vocab)
    assert got.usage is None and got.tokens is None and got.content == "Hello world\u2014!"


def test_a_vllm_body_parsed_in_bytes_mode_is_refused_with_the_right_mode(teacher):
    _, vocab = teacher
    with pytest.raises(WireError, match=r"choices\[0\]\.logprobs\.content\[0\]\.token is 'token_id:13048'.*'vllm'"):
        parse_completion(load("vllm_logprobs"), "bytes", vocab=vocab)


def test_bytes_mode_without_bytes_says_why(teacher):
    _, vocab = teacher
    body = load("openai_logprobs")
    body["choices"][0]["logprobs"]["content"][1]["bytes"] = None
    with pytest.raises(WireError, match=r"content\[1\]\.bytes: missing or null .*'vllm' or 'sglang'"):
        parse_completion(body, "bytes", vocab=vocab)


def test_bytes_mode_needs_a_vocab():
    with pytest.raises(ValueError, match="ByteVocab.from_tokenizer_json"):
        parse_completion(load("openai_logprobs"), "bytes")




def tokenizers_byte_chars() -> dict[int, str]:
    """byte -> char as tokenizers' ByteLevel pre-tokenizer spells it, for every byte valid UTF-8 can hold."""
    samples = [chr(c) for c in range(0x801)] + [chr(c << 12) for c in range(1, 16)]
    samples += [chr(c) for c in (0x10000, 0x40000, 0x80000, 0xC0000, 0x100000)]
    return {b: c for s in samples for b, c in zip(s.encode("utf-8"), byte_level(s))}


def test_byte_vocab_agrees_with_the_tokenizers_decoder(teacher):
    tok, vocab = teacher
    for token_id in range(tok.get_vocab_size(with_added_tokens=True)):
        text = tok.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in text:  # partial UTF-8 tokens decode lossily; they are checked byte by byte below
            assert vocab.id_for(text.encode("utf-8")) == token_id, (token_id, text)
    chars = tokenizers_byte_chars()
    assert len(chars) == 256 - 13  # C0, C1 and F5..FF never occur in UTF-8
    for b, char in chars.items():
        assert vocab.id_for(bytes([b])) == tok.token_to_id(char), b
    assert vocab.id_for("\u65e5\u672c".encode()) == tok.token_to_id("\u65e5\u672c")


def test_ambiguous_bytes_name_both_ids(dup_vocab_path):
    tok, path = dup_vocab_path
    vocab = ByteVocab.from_tokenizer_json(path)
    both = (tok.token_to_id("\u0120world"), tok.token_to_id(" world"))
    assert vocab.ambiguous[b" world"] == tuple(sorted(both))
    with pytest.raises(ByteVocabError, match=rf"decode from ids {min(both)} and {max(both)}"):
        vocab.id_for(b" world")
    assert b" world" not in vocab.ids and vocab.id_for(b"Hello") == tok.token_to_id("Hello")


def test_ambiguous_bytes_inside_a_response_name_the_position(dup_vocab_path):
    _, path = dup_vocab_path
    with pytest.raises(WireError, match=r"content\[1\]\.bytes \(token ' world'\): bytes b' world' decode from ids"):
        parse_completion(load("openai_logprobs"), "bytes", vocab=ByteVocab.from_tokenizer_json(path))


def test_unknown_bytes_and_non_byte_level_tokenizers_are_refused(tmp_path):
    vocab = ByteVocab.from_token_bytes({0: b"a", 1: b"b"})
    with pytest.raises(ByteVocabError, match="no token of this vocabulary"):
        vocab.id_for(b"zz")
    spm = Tokenizer(models.BPE(vocab={"<unk>": 0, "<0xE2>": 1, "\u2581a": 2}, merges=[], byte_fallback=True,
                               unk_token="<unk>"))
    spm.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    path = tmp_path / "tokenizer.json"
    path.write_text(spm.to_str(), encoding="utf-8")
    with pytest.raises(ByteVocabError, match="not ByteLevel"):
        ByteVocab.from_tokenizer_json(path)


# Shape: vllm/entrypoints/openai/chat_completion/serving.py (_create_chat_logprobs, _get_top_logprobs:
# token f"token_id:{id}" when return_tokens_as_token_ids, bytes = token.encode(errors="replace"), the
# sampled token first in the alternatives), chat_completion/protocol.py (ChatCompletionLogProbsContent,
# ChatCompletionResponseChoice.token_ids, ChatCompletionResponse.prompt_logprobs / prompt_token_ids) and
# clamp_prompt_logprobs (prompt_logprobs[0] is None). Ids are illustrative (Qwen2.5-like).


def test_vllm_ids_come_from_token_id_strings_not_from_lossy_bytes():
    got = parse_completion(load("vllm_logprobs"), "vllm", top_k=3)
    assert got.tokens.token_ids == (13048, 11162, 239, 151645)
    assert got.tokens.top_ids[1] == (11162, 61804, 0)  # sampled token first although rank 2
    assert got.tokens.top_logprobs[1] == (-1.1, -0.9, -2.2)
    assert got.content == "Hi \U0001F44B" and got.tool_calls == () and got.usage.cached_tokens is None


def test_vllm_byte_fallback_pieces_with_identical_strings_and_bytes_stay_distinct():
    body = load("vllm_logprobs")
    position = body["choices"][0]["logprobs"]["content"][2]
    assert position["bytes"] == list("\ufffd".encode())  # what vLLM sends for a partial UTF-8 token
    assert parse_completion(body, "vllm").tokens.top_ids[2] == (239, 234, 240)


def test_vllm_prompt_logprobs_start_with_a_null_position():
    prompt = parse_completion(load("vllm_logprobs"), "vllm").prompt
    assert prompt.token_ids == (None, 872, 198, 13048, 151645)
    assert prompt.logprobs[0] is None and prompt.logprobs[1] == -11.25
    assert prompt.top_ids[0] == () and prompt.top_ids[3] == (13048, 9707, 40)
    with pytest.raises(WireError, match=r"prompt_logprobs\[2\]: an empty object"):
        body = load("vllm_logprobs")
        body["prompt_logprobs"][2] = {}
        parse_completion(body, "vllm")


def test_vllm_parallel_tool_calls():
    got = parse_completion(load("vllm_tool_calls"), "vllm")
    assert got.content is None and got.tokens is None and got.prompt is None and got.usage.cached_tokens == 16
    assert [c.name for c in got.tool_calls] == ["get_weather", "get_time"]
    assert got.tool_calls[0].arguments == '{"city": "Paris", "unit": "celsius"}'


@pytest.mark.parametrize("name", ["openai_logprobs", "sglang_meta_info"])
def test_text_tokens_parsed_in_vllm_mode_are_refused(name):
    with pytest.raises(WireError, match=r"content\[0\]\.token: expected 'token_id:N' .*return_tokens_as_token_ids"):
        parse_completion(load(name), "vllm")


# Shape: python/sglang/srt/entrypoints/openai/protocol.py (ChatCompletionResponseChoice: logprobs,
# matched_stop, meta_info; UsageInfo with reasoning_tokens; ChatMessage content "" when tools are called),
# serving_chat.py (_build_chat_response: meta_info=ret_item["meta_info"] if request.return_meta_info;
# _process_logprobs_tokens: bytes = token.encode("utf-8")), utils.py to_openai_style_logprobs (alternatives
# with equal text folded by setdefault), tokenizer_manager.py detokenize_logprob_tokens ((logprob, id, text)).


def test_sglang_ids_come_from_meta_info_triples():
    got = parse_completion(load("sglang_meta_info"), "sglang", top_k=3)
    assert got.tokens.token_ids == (13048, 11162, 239, 151645)
    assert got.tokens.logprobs == (-0.31, -1.1, -0.05, -0.001)
    assert got.tokens.top_ids[1] == (61804, 11162, 0)
    assert got.finish_reason == "stop" and got.usage.prompt_tokens == 12 and got.usage.cached_tokens is None


def test_sglang_keeps_the_alternatives_its_openai_view_folds_together():
    body = load("sglang_meta_info")
    folded = body["choices"][0]["logprobs"]["content"][2]["top_logprobs"]
    assert [alt["token"] for alt in folded] == ["\ufffd"]  # three ids, one string: SGLang kept one
    assert parse_completion(body, "sglang").tokens.top_ids[2] == (239, 234, 240)


def test_sglang_without_meta_info_asks_for_return_meta_info():
    body = load("sglang_meta_info")
    del body["choices"][0]["meta_info"]
    with pytest.raises(WireError, match=r"choices\[0\]\.meta_info\.output_token_logprobs: missing .*return_meta_info"):
        parse_completion(body, "sglang")
    with pytest.raises(WireError, match="return_meta_info"):
        parse_completion(load("vllm_logprobs"), "sglang")


def test_sglang_null_positions_and_null_logprobs():
    body = load("sglang_meta_info")
    meta = body["choices"][0]["meta_info"]
    meta["output_top_logprobs"][3] = None
    meta["output_top_logprobs"][2][2][0] = None  # orjson writes -inf as null
    tokens = parse_completion(body, "sglang", top_k=3).tokens
    assert tokens.top_counts == (3, 3, 3, 0) and tokens.short_positions == (3,)
    assert tokens.top_logprobs[2][2] == -math.inf


def test_sglang_tool_calls_with_empty_content_and_no_logprobs():
    got = parse_completion(load("sglang_tool_calls"), "sglang")
    assert got.content == "" and got.tokens is None and got.usage.cached_tokens == 256
    assert [json.loads(c.arguments)["city"] for c in got.tool_calls] == ["Paris", "Tokyo"]




def test_several_choices_are_returned_by_index():
    body = load("vllm_logprobs")
    second = copy.deepcopy(body["choices"][0])
    second["index"], second["message"]["content"] = 1, "Hey"
    body["choices"] = [second, body["choices"][0]]
    assert [c.index for c in parse_completions(body, "vllm")] == [0, 1]
    with pytest.raises(WireError, match="expected one choice, got 2"):
        parse_completion(body, "vllm")


def _set(path: list, value):
    def mutate(body: dict) -> None:
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


C0 = ["choices", 0]
LP = [*C0, "logprobs", "content"]


@pytest.mark.parametrize("mutate, message", [
    (_set([*LP, 1, "logprob"], "low"), r"content\[1\]\.logprob: expected a number, got 'low'"),
    (_set([*LP, 1, "logprob"], 0.5), r"content\[1\]\.logprob: a log probability must be <= 0"),
    (_set([*LP, 2, "top_logprobs", 1], "token_id:7"), r"top_logprobs\[1\]: expected a JSON object"),
    (_set([*LP, 2, "top_logprobs", 1, "token"], "token_id:239"), r"content\[2\]: token id 239 listed twice"),
    (_set([*LP, 0, "top_logprobs"], [{"token": f"token_id:{i}", "logprob": -1.0} for i in range(4)]),
     r"content\[0\]: 4 alternatives, more than the 3 requested"),
    (_set([*C0, "message"], None), r"choices\[0\]\.message: null, expected dict"),
    (_set([*C0, "message", "tool_calls"], [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]),
     r"tool_calls\[0\]\.function\.arguments: expected str, got dict"),
    (_set([*C0, "message", "tool_calls"], [{"type": "custom", "custom": {"name": "f"}}]),
     r"tool_calls\[0\]\.type: only function tool calls"),
    (_set(["usage", "prompt_tokens"], True), r"usage\.prompt_tokens: expected int, got bool"),
    (_set(["choices"], []), r"response\.choices: empty"),
    (_set(["prompt_logprobs", 1], {"-3": {"logprob": -1.0}}), r"prompt_logprobs\[1\] key '-3': expected a token id"),
])
def test_malformed_vllm_bodies_name_the_field(mutate, message):
    body = load("vllm_logprobs")
    mutate(body)
    with pytest.raises(WireError, match=message):
        parse_completion(body, "vllm", top_k=3)


@pytest.mark.parametrize("body, message", [
    ([1, 2], r"response: expected a JSON object, got list"),
    ({"error": {"message": "model not found", "type": "NotFoundError"}}, "answered with an error.*model not found"),
    ({"object": "error", "message": "bad", "code": 400}, "answered with an error.*'bad'"),
    ({"object": "chat.completion"}, r"response\.choices: missing, expected list"),
])
def test_bodies_that_are_no_completion(body, message):
    with pytest.raises(WireError, match=message):
        parse_completion(body, "vllm")


def test_sglang_malformed_triples_name_the_position():
    body = load("sglang_meta_info")
    body["choices"][0]["meta_info"]["output_top_logprobs"][1][2] = [-1.0, -5, "x"]
    with pytest.raises(WireError, match=r"output_top_logprobs\[1\]\[2\]\[1\]: expected a token id .* got -5"):
        parse_completion(body, "sglang")


def test_errors_truncate_huge_values():
    body = load("openai_logprobs")
    body["choices"][0]["logprobs"]["content"][0]["token"] = "x" * 100_000
    with pytest.raises(WireError) as raised:
        parse_completion(body, "vllm")
    assert len(str(raised.value)) < 400 and "(100002 chars)" in str(raised.value)


def test_results_are_frozen():
    got = parse_completion(load("vllm_logprobs"), "vllm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.content = "changed"  # type: ignore[misc]
    hash(got.tokens)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown token-id mode 'tgi'"):
        parse_completion(load("vllm_logprobs"), "tgi")




def test_request_extras_per_mode():
    assert request_extras("bytes", 5) == {"logprobs": True, "top_logprobs": 5}
    assert request_extras("vllm", 20) == {"logprobs": True, "top_logprobs": 20, "return_tokens_as_token_ids": True}
    assert request_extras(TokenIds.SGLANG, 1) == {"logprobs": True, "top_logprobs": 1, "return_meta_info": True}
    assert request_extras("bytes", 0) == request_extras("vllm", 0) == {}, "top_k 0: no logprobs asked (some APIs refuse the field)"
    assert request_extras("vllm", 4, prompt_top_k=1, openai_kwargs=True) == {
        "logprobs": True, "top_logprobs": 4,
        "extra_body": {"return_tokens_as_token_ids": True, "prompt_logprobs": 1}}
    assert request_extras("bytes", 3, openai_kwargs=True) == {"logprobs": True, "top_logprobs": 3}


@pytest.mark.parametrize("top_k", [-1, 21, True, 2.0, None])
def test_request_extras_validates_top_k(top_k):
    with pytest.raises(ValueError, match=r"top_k must be an integer in 0\.\.20"):
        request_extras("vllm", top_k)


def test_prompt_logprobs_are_vllm_only():
    with pytest.raises(ValueError, match="only vLLM returns prompt logprobs"):
        request_extras("sglang", 3, prompt_top_k=2)
