"""A transcript's training row built on the teacher's own token ids, for logit KD from an HTTP teacher.

Logit KD compares, position by position, the student's distribution with the teacher's top-k
logprobs. Those logprobs describe the tokens the teacher generated, so the row must hold exactly
those tokens where the teacher wrote: re-tokenizing the teacher's text can split it differently
(and the template re-serializes tool-call arguments), and then no logprob would line up. So:

- every non-assistant stretch (system, user and tool turns, the template's role markers) is the
  chat template's rendering, tokenized as `encode_chat` tokenizes it;
- each assistant turn is the ids of the teacher's answer for it, stop token included (vLLM and
  SGLang count it as generated and give its logprobs);
- after an answer, whatever the template writes after the teacher's text in that turn (e.g. the
  newline after `<|im_end|>` in ChatML) is appended as template tokens, outside the loss; when the
  teacher's decoded text is not a prefix of the template's turn (e.g. a tool call whose JSON the
  template re-serializes), nothing is appended and `template_mismatch` counts it.

Masks: `loss_mask` is 1 on the answers' tokens; the tool-name, argument and integration spans are
found in each answer's decoded text with the rules of `chat.find_spans` and mapped to the answer's
tokens through their decoded character offsets. `answer_positions[j]` lists the row positions of
answer j's tokens: the teacher's logprobs for answer token i are the target at position
`answer_positions[j][i] - 1` (the target at t describes token t + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from .chat import MASKS, ChatTemplate, ChatTemplateError, _call_spans, overlapping, prepare_messages
from .chat_checks import integration_spans, integration_values


@dataclass
class TeacherRow:
    input_ids: list[int]
    masks: dict[str, list[int]]
    answer_positions: list[list[int]]
    template_mismatch: int  # answers whose text is not how the template renders the turn


def _offsets(tok, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of `ids` and each token's character span in it (by decoding prefixes, so multi-byte
    characters split over tokens land on the token that completes them)."""
    spans, prev = [], 0
    for i in range(len(ids)):
        end = len(tok.decode(ids[:i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        spans.append((prev, max(prev, end)))
        prev = max(prev, end)
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), spans


def encode_with_answers(sample: dict, tok, template: ChatTemplate, answers: list[list[int]],
                        **template_kwargs) -> TeacherRow:
    """The row of a transcript whose j-th assistant turn the teacher generated as `answers[j]`."""
    kwargs = {**tok.special_tokens_map, **template_kwargs}
    msgs = prepare_messages(sample["messages"], arguments_as_dict=True)
    turns = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]
    if len(turns) != len(answers):
        raise ChatTemplateError(f"{len(turns)} assistant turns but {len(answers)} teacher answers")
    tools = sample.get("tools") or None
    render = lambda upto, gen=False: template.render(msgs[:upto], tools, add_generation_prompt=gen, prepared=True, **kwargs)  # noqa: E731
    full = render(len(msgs))
    ids: list[int] = []
    masks = {m: [] for m in MASKS}
    positions: list[list[int]] = []
    mismatch = 0
    done = ""  # the rendered text already in the row (as template text or as the teacher's turn)

    def add(new_ids: list[int], loss: int) -> None:
        ids.extend(new_ids)
        for m in MASKS:
            masks[m].extend([loss if m == "loss_mask" else 0] * len(new_ids))

    def template_text(text: str) -> None:
        if text:
            add(list(tok(text, add_special_tokens=False)["input_ids"]), 0)

    values = integration_values(msgs)
    for j, i in enumerate(turns):
        prefix = render(i, gen=True)
        if not prefix.startswith(done):
            raise ChatTemplateError(f"{template.name}: messages[:{i}] with the generation prompt does not extend the "
                                    "rendering before it; turns cannot be cut out of this template")
        template_text(prefix[len(done):])
        start = len(ids)
        add(list(answers[j]), 1)
        positions.append(list(range(start, len(ids))))
        text, offsets = _offsets(tok, list(answers[j]))
        spans = {m: [] for m in MASKS}
        _call_spans(text, 0, len(text), sample["messages"][i], i, spans, [])
        last = i == len(msgs) - 1
        content = msgs[i].get("content")
        if last and not msgs[i].get("tool_calls") and any(m.get("role") == "tool" for m in msgs) and isinstance(content, str):
            at = text.rfind(content.strip()) if content.strip() else -1
            if at >= 0:
                spans["integration_mask"] += [(at + a, at + b) for a, b in integration_spans(content.strip(), values)]
        for m in ("tool_name_mask", "json_args_mask", "integration_mask"):
            for a, b in spans[m]:
                for k in overlapping(offsets, a, b):
                    masks[m][start + k] = 1
        turn = render(i + 1)
        rendered_turn = turn[len(prefix):]
        if rendered_turn.startswith(text):
            template_text(rendered_turn[len(text):])
        else:
            mismatch += 1
        done = turn
    if full.startswith(done):
        template_text(full[len(done):])
    return TeacherRow(ids, masks, positions, mismatch)
