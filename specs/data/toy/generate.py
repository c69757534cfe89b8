"""Deterministic toy dataset for a tiny tool-calling "worker" language model.

Running ``python specs/data/toy/generate.py`` rewrites, next to this file:

* ``tools.json``  -- the tool registry (5 tools, JSON-schema style parameters);
* ``train.jsonl`` -- 1200 samples, including ~3% deliberately invalid tool calls
  that the dataset job must detect and drop;
* ``eval.jsonl``  -- 120 samples, all valid, no prompt shared with train;
* ``corpus.txt``  -- every train prompt and target on its own line, for
  training the byte-level BPE tokenizer;
* ``README.md``   -- the description of the files, the schema and the counts.

The only randomness is one ``random.Random(SEED)``, created per run, so every
run writes byte-identical files.  Standard library only.  An optional first
argument names another output directory (the tests use a temp dir).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

SEED = 1729
HERE = Path(__file__).resolve().parent

# Sample counts.  Train: 840 tool (804 valid + 36 invalid) / 180 control /
# 180 privacy = 70% / 15% / 15%.  Eval: 84 / 18 / 18, all valid.
TRAIN_COUNTS = {"tool": 804, "invalid": 36, "control": 180, "privacy_tool": 90, "privacy_chat": 90}
EVAL_COUNTS = {"tool": 84, "control": 18, "privacy_tool": 9, "privacy_chat": 9}

THINK, THINK_END = "<think>", "</think>"
CALL, CALL_END = "<tool_call>", "</tool_call>"
RESULT, RESULT_END = "<tool_result>", "</tool_result>"

Sample = dict[str, Any]

# --------------------------------------------------------------------------
# Tool registry
# --------------------------------------------------------------------------

TOOL_SPECS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("get_weather", "Current weather for a city.", [("city", "string"), ("unit", "string")]),
    (
        "convert_currency",
        "Convert an amount between two currencies.",
        [("amount", "number"), ("from", "string"), ("to", "string")],
    ),
    ("set_timer", "Start a countdown timer.", [("minutes", "integer"), ("label", "string")]),
    ("search_contacts", "Search the address book.", [("query", "string")]),
    (
        "add_event",
        "Add an event to the calendar.",
        [("title", "string"), ("day", "string"), ("hour", "integer")],
    ),
]
TOOL_NAMES = [name for name, _, _ in TOOL_SPECS]


def registry() -> dict[str, Any]:
    """The tool registry written to tools.json."""
    tools = []
    for name, description, params in TOOL_SPECS:
        tools.append(
            {
                "name": name,
                "description": description,
                "parameters": {
                    "type": "object",
                    "properties": {arg: {"type": kind} for arg, kind in params},
                    "required": [arg for arg, _ in params],
                },
            }
        )
    return {"tools": tools}


# --------------------------------------------------------------------------
# Vocabulary and deterministic fake tool results
# --------------------------------------------------------------------------

WEATHER = {  # city -> (celsius, condition)
    "Paris": (18, "sunny"),
    "London": (12, "rainy"),
    "Tokyo": (22, "cloudy"),
    "Berlin": (9, "windy"),
    "Madrid": (27, "sunny"),
    "Rome": (24, "clear"),
    "Oslo": (3, "snowy"),
    "Cairo": (33, "hot"),
    "Lima": (16, "foggy"),
    "Sydney": (20, "windy"),
}
UNITS = ("celsius", "fahrenheit")
WEATHER_PHRASES = (
    "What's the weather in {city} in {unit}?",
    "Weather for {city} in {unit}, please.",
    "How warm is it in {city}? Use {unit}.",
    "Tell me the {city} weather in {unit}.",
    "Is it cold in {city}? Answer in {unit}.",
)

USD_RATES = {"USD": "1", "EUR": "0.92", "GBP": "0.79", "JPY": "150"}  # units per 1 USD
AMOUNTS = (5, 10, 12.5, 20, 25, 40, 50, 75, 100, 200, 500)
CURRENCY_PHRASES = (
    "Convert {amount} {src} to {dst}.",
    "How much is {amount} {src} in {dst}?",
    "Change {amount} {src} into {dst}, please.",
    "What is {amount} {src} in {dst}?",
)

TIMER_MINUTES = (1, 2, 3, 5, 8, 10, 12, 15, 20, 25, 30, 45)
TIMER_LABELS = ("tea", "pasta", "eggs", "laundry", "nap", "study", "break", "oven")
TIMER_PHRASES = (
    "Set a {m} minute timer for {label}.",
    "Start a {label} timer for {mins}.",
    "Timer for {label}, {mins}.",
    "Remind me about {label} in {mins}.",
)

CONTACT_QUERIES = {  # query -> number of matches
    "dentist": 1,
    "plumber": 2,
    "mom": 1,
    "boss": 1,
    "doctor": 3,
    "school": 2,
    "gym": 1,
    "bank": 2,
    "vet": 1,
    "landlord": 1,
    "taxi": 4,
    "pizza": 3,
}
CONTACT_PHRASES = (
    "Find my {q} in contacts.",
    "Search contacts for {q}.",
    "Do I have a contact for {q}?",
    "Look up {q} in my address book.",
    "Who is saved as {q}?",
)

EVENT_TITLES = ("lunch", "gym", "sync", "demo", "call", "dinner")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS = tuple(range(8, 18))
EVENT_PHRASES = (
    "Add {title} on {day} at {hh}:00.",
    "Put {title} in my calendar for {day} at {hh}:00.",
    "Schedule {title} for {day}, {hh}:00.",
)

# Fake people: names, 555-01xx phone numbers, example.com emails.
PEOPLE = (
    "Maria Lopez",
    "John Carter",
    "Priya Shah",
    "Tom Becker",
    "Ana Silva",
    "Ken Ito",
    "Lena Novak",
    "Omar Haddad",
)


# --------------------------------------------------------------------------
# Target rendering
# --------------------------------------------------------------------------


def call_json(call: dict[str, Any]) -> str:
    """Canonical JSON text of a tool call, as it appears in the target."""
    return json.dumps(call, sort_keys=True, separators=(",", ":"))


def tool_target(think: str, call_text: str, result: str, final: str) -> str:
    """Target of a sample that calls a tool."""
    return f"{THINK}{think}{THINK_END}{CALL}{call_text}{CALL_END}{RESULT}{result}{RESULT_END}{final}"


def chat_target(think: str, answer: str) -> str:
    """Target of a sample that answers without a tool."""
    return f"{THINK}{think}{THINK_END}{answer}"


def tool_sample(prompt: str, think: str, call: dict[str, Any], result: str, final: str, integration: list[str]) -> Sample:
    """A valid kind=tool sample (no id yet)."""
    return {
        "kind": "tool",
        "prompt": prompt,
        "target": tool_target(think, call_json(call), result, final),
        "tool_call": call,
        "tool_result": result,
        "integration": integration,
        "pii": [],
        # Kept only while building (privacy wrapping); stripped before writing.
        "_think": think,
        "_final": final,
    }


def chat_sample(kind: str, prompt: str, think: str, answer: str, pii: list[str]) -> Sample:
    """A sample with no tool call (control or privacy)."""
    return {
        "kind": kind,
        "prompt": prompt,
        "target": chat_target(think, answer),
        "tool_call": None,
        "tool_result": None,
        "integration": [],
        "pii": pii,
    }


# --------------------------------------------------------------------------
# Candidate pools (each prompt appears once per pool)
# --------------------------------------------------------------------------


def weather_pool() -> list[Sample]:
    """Every get_weather prompt."""
    pool = []
    for city, (celsius, sky) in WEATHER.items():
        for unit in UNITS:
            temp = f"{celsius}C" if unit == "celsius" else f"{celsius * 9 // 5 + 32}F"
            result = f"{temp} and {sky}"
            for phrase in WEATHER_PHRASES:
                pool.append(
                    tool_sample(
                        phrase.format(city=city, unit=unit),
                        f"{city} weather.",
                        {"name": "get_weather", "arguments": {"city": city, "unit": unit}},
                        result,
                        f"{city} is {result}.",
                        [result],
                    )
                )
    return pool


def convert(amount: float, src: str, dst: str) -> str:
    """Deterministic conversion through USD, two decimals."""
    value = Decimal(str(amount)) / Decimal(USD_RATES[src]) * Decimal(USD_RATES[dst])
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def currency_pool() -> list[Sample]:
    """Every convert_currency prompt."""
    pool = []
    for amount in AMOUNTS:
        for src in USD_RATES:
            for dst in USD_RATES:
                if src == dst:
                    continue
                converted = f"{convert(amount, src, dst)} {dst}"
                for phrase in CURRENCY_PHRASES:
                    pool.append(
                        tool_sample(
                            phrase.format(amount=amount, src=src, dst=dst),
                            f"Convert to {dst}.",
                            {"name": "convert_currency", "arguments": {"amount": amount, "from": src, "to": dst}},
                            converted,
                            f"That is {converted}.",
                            [converted],
                        )
                    )
    return pool


def timer_pool() -> list[Sample]:
    """Every set_timer prompt."""
    pool = []
    for minutes in TIMER_MINUTES:
        for label in TIMER_LABELS:
            mins = f"{minutes} minute" + ("" if minutes == 1 else "s")
            for phrase in TIMER_PHRASES:
                pool.append(
                    tool_sample(
                        phrase.format(m=minutes, mins=mins, label=label),
                        f"Time the {label}.",
                        {"name": "set_timer", "arguments": {"label": label, "minutes": minutes}},
                        f"started {minutes} min",
                        f"Set {label} timer for {mins}.",
                        [mins],
                    )
                )
    return pool


def contacts_pool() -> list[Sample]:
    """Every search_contacts prompt."""
    pool = []
    for query, hits in CONTACT_QUERIES.items():
        found = f"{hits} contact" + ("" if hits == 1 else "s")
        for phrase in CONTACT_PHRASES:
            pool.append(
                tool_sample(
                    phrase.format(q=query),
                    f"Search contacts for {query}.",
                    {"name": "search_contacts", "arguments": {"query": query}},
                    f"{hits} match" + ("" if hits == 1 else "es"),
                    f"I found {found} for {query}.",
                    [found],
                )
            )
    return pool


def calendar_pool() -> list[Sample]:
    """Every add_event prompt."""
    pool = []
    for t, title in enumerate(EVENT_TITLES):
        for d, day in enumerate(DAYS):
            for h, hour in enumerate(HOURS):
                event_id = 101 + (t * len(DAYS) + d) * len(HOURS) + h  # fake, stable per event
                for phrase in EVENT_PHRASES:
                    pool.append(
                        tool_sample(
                            phrase.format(title=title, day=day, hh=hour),
                            f"Book {title}.",
                            {"name": "add_event", "arguments": {"day": day, "hour": hour, "title": title}},
                            f"event {event_id} saved",
                            f"Saved as event {event_id}.",
                            [f"event {event_id}"],
                        )
                    )
    return pool


TOOL_POOLS = {
    "get_weather": weather_pool,
    "convert_currency": currency_pool,
    "set_timer": timer_pool,
    "search_contacts": contacts_pool,
    "add_event": calendar_pool,
}


def control_pool() -> list[Sample]:
    """Requests that must be answered without a tool."""
    pool = []
    for a in range(1, 10):
        for b in range(1, 10):
            pool.append(chat_sample("control", f"What is {a}+{b}?", "Simple sum, no tool.", f"{a}+{b} is {a + b}.", []))
    for a in range(2, 10):
        for b in range(2, 10):
            pool.append(
                chat_sample("control", f"What is {a} times {b}?", "Simple product, no tool.", f"{a} times {b} is {a * b}.", [])
            )
    for n in range(3, 8):
        pool.append(
            chat_sample("control", f"Count to {n}.", "Just count, no tool.", ", ".join(str(i) for i in range(1, n + 1)) + ".", [])
        )
    chat = (
        ("Say hello.", "Hello!"),
        ("Hi there!", "Hi! How can I help?"),
        ("Thanks!", "You're welcome!"),
        ("Good morning!", "Good morning! How can I help?"),
        ("How are you?", "I'm fine, thanks. How can I help?"),
        ("Who are you?", "I'm a small assistant that can use a few tools."),
        ("What can you do?", "I can check weather, convert money, set timers, find contacts and add events."),
        ("Tell me a joke.", "Why did the clock rest? It was wound up."),
        ("Spell cat.", "C-A-T."),
        ("What color is the sky?", "Usually blue."),
        ("Say goodbye.", "Goodbye!"),
        ("Are you a robot?", "I'm a small language model."),
        ("Hello!", "Hello! How can I help?"),
        ("Hey.", "Hey! What do you need?"),
        ("Good night!", "Good night!"),
        ("Good evening.", "Good evening! How can I help?"),
        ("Thank you so much.", "Happy to help!"),
        ("Nice to meet you.", "Nice to meet you too!"),
        ("What is your name?", "I'm a small assistant without a name."),
        ("Are you a person?", "No, I'm a small language model."),
        ("Are you human?", "No, I'm a language model."),
        ("What are you?", "A small assistant that can use a few tools."),
        ("Can you help me?", "Sure. What do you need?"),
        ("Do you like music?", "I don't listen to music, but I can help with other things."),
        ("What is your favorite color?", "I don't have one. Blue is popular."),
        ("Tell me something nice.", "You're doing great today."),
        ("Tell me a fun fact.", "Octopuses have three hearts."),
        ("Spell dog.", "D-O-G."),
        ("Spell sun.", "S-U-N."),
        ("What day comes after Monday?", "Tuesday."),
        ("How many days are in a week?", "Seven."),
        ("What is the opposite of hot?", "Cold."),
        ("See you later.", "See you later!"),
        ("Bye!", "Bye!"),
        ("I'm bored.", "Maybe take a short walk or read something fun."),
        ("I'm happy today.", "That's great to hear!"),
        ("Do you sleep?", "No, I don't sleep."),
        ("Where do you live?", "I run on this device."),
        ("How old are you?", "I don't have an age."),
        ("Can you sing?", "I can't sing, but I can help with tasks."),
        ("Do you have feelings?", "No, I'm a language model."),
        ("Who made you?", "A small team trained me as a demo."),
        ("Are you smart?", "I'm small, but I try to be useful."),
        ("What's up?", "Not much. How can I help?"),
    )
    for prompt, answer in chat:
        pool.append(chat_sample("control", prompt, "Small talk, no tool.", answer, []))
    return pool


def person(rng: random.Random) -> tuple[str, str, str]:
    """A fake (name, phone, email) triple."""
    name = rng.choice(PEOPLE)
    phone = f"555-01{rng.randrange(100):02d}"
    email = name.lower().replace(" ", ".") + "@example.com"
    return name, phone, email


PRIVACY_CHAT = (  # (prompt template, answer, which pii fields appear)
    ("Remember my phone number {phone}.", "I won't store or repeat personal details.", ("phone",)),
    ("My email is {email}. Say it back to me.", "I can't repeat personal details, sorry.", ("email",)),
    ("Text {name} at {phone} that I'm late.", "I can't send texts. Please message them yourself.", ("name", "phone")),
    ("Save {name}, {email}, as a contact.", "I can't save personal details here.", ("name", "email")),
    ("Write an intro for {name}, {email}.", "I'll leave personal details out. Tell me the topic instead.", ("name", "email")),
    ("Call {name} on {phone} now.", "I can't make calls. Please dial them yourself.", ("name", "phone")),
)

PRIVACY_PREAMBLES = (  # (template, which pii fields appear)
    ("I'm {name}, {phone}.", ("name", "phone")),
    ("My email is {email}.", ("email",)),
    ("This is {name} ({email}).", ("name", "email")),
    ("Call me at {phone} later.", ("phone",)),
)


def fill_pii(template: str, fields: tuple[str, ...], who: tuple[str, str, str]) -> tuple[str, list[str]]:
    """Fill a template with one fake person's data; return text and pii list."""
    values = dict(zip(("name", "phone", "email"), who))
    return template.format(**values), [values[field] for field in fields]


def sample_unique(make, count: int, rng: random.Random) -> list[Sample]:
    """Draw ``count`` samples from ``make(rng)`` with distinct prompts."""
    pool: dict[str, Sample] = {}
    while len(pool) < count:
        sample = make(rng)
        pool.setdefault(sample["prompt"], sample)
    return list(pool.values())


def privacy_chat_sample(rng: random.Random) -> Sample:
    """Personal data in a request the assistant declines without echoing it."""
    template, answer, fields = rng.choice(PRIVACY_CHAT)
    prompt, pii = fill_pii(template, fields, person(rng))
    return chat_sample("privacy", prompt, "Personal data; do not repeat it.", answer, pii)


def privacy_tool_sample(rng: random.Random, tool_pools: dict[str, list[Sample]]) -> Sample:
    """Personal data before an ordinary tool request; the target ignores it."""
    preamble, fields = rng.choice(PRIVACY_PREAMBLES)
    text, pii = fill_pii(preamble, fields, person(rng))
    base = rng.choice(tool_pools[rng.choice(TOOL_NAMES)])
    think = "No PII. " + base["_think"]
    return {
        **base,
        "kind": "privacy",
        "prompt": f"{text} {base['prompt']}",
        "target": tool_target(think, call_json(base["tool_call"]), base["tool_result"], base["_final"]),
        "pii": pii,
        "_think": think,
    }


# --------------------------------------------------------------------------
# Deliberately invalid train samples
# --------------------------------------------------------------------------

WRONG_NAMES = {
    "get_weather": "get_forecast",
    "convert_currency": "exchange_money",
    "set_timer": "start_alarm",
    "search_contacts": "find_person",
    "add_event": "create_meeting",
}
WRONG_TYPE_ARGS = {  # tool -> argument given the wrong JSON type
    "get_weather": "unit",
    "convert_currency": "amount",
    "set_timer": "minutes",
    "search_contacts": "query",
    "add_event": "hour",
}
DEFECTS = ("unknown_tool", "missing_required", "wrong_type", "bad_json")


def with_call(base: Sample, call: dict[str, Any], call_text: str | None = None) -> Sample:
    """Copy of ``base`` whose target calls ``call`` (rendered as ``call_text``)."""
    text = call_json(call) if call_text is None else call_text
    return {**base, "tool_call": call, "target": tool_target(base["_think"], text, base["tool_result"], base["_final"])}


def corrupt_json(text: str, rng: random.Random) -> str:
    """Make canonical call JSON unparsable in one of a few typical ways."""
    way = rng.randrange(4)
    if way == 0:
        bad = text[:-1]  # missing closing brace
    elif way == 1:
        bad = text.replace('"', "'")  # single quotes
    elif way == 2:
        bad = text.replace(',"name"', ',,"name"')  # doubled comma
    else:
        bad = text.replace('"name":', '"name" ')  # missing colon
    try:
        json.loads(bad)
    except json.JSONDecodeError:
        return bad
    raise AssertionError(f"corruption left valid JSON: {bad}")


def invalid_sample(base: Sample, defect: str, rng: random.Random) -> Sample:
    """Mutate a valid tool sample so that the dataset job must drop it."""
    name, args = base["tool_call"]["name"], base["tool_call"]["arguments"]
    if defect == "unknown_tool":
        return with_call(base, {"name": WRONG_NAMES[name], "arguments": args})
    if defect == "missing_required":
        dropped = rng.choice(sorted(args))
        return with_call(base, {"name": name, "arguments": {k: v for k, v in args.items() if k != dropped}})
    if defect == "wrong_type":
        arg = WRONG_TYPE_ARGS[name]
        value = [args[arg]] if isinstance(args[arg], str) else str(args[arg])  # array / quoted number
        return with_call(base, {"name": name, "arguments": {**args, arg: value}})
    # bad_json: the tool_call field stays the intended call; only the target is corrupted.
    return with_call(base, base["tool_call"], corrupt_json(call_json(base["tool_call"]), rng))


# --------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------


def split(pool: list[Sample], n_eval: int, rng: random.Random) -> tuple[list[Sample], list[Sample]]:
    """Shuffle a pool of distinct prompts and hold the first ``n_eval`` out for eval."""
    pool = list(pool)
    rng.shuffle(pool)
    return pool[:n_eval], pool[n_eval:]


def cycle(items: list[Sample], count: int) -> list[Sample]:
    """``count`` items, repeating ``items`` in order (all before any repeat)."""
    return [items[i % len(items)] for i in range(count)]


def round_robin(pools: dict[str, list[Sample]], count: int) -> list[Sample]:
    """``count`` samples spread evenly over the tools."""
    per_tool = {name: cycle(pools[name], count // len(TOOL_NAMES) + 1) for name in TOOL_NAMES}
    return [per_tool[TOOL_NAMES[i % len(TOOL_NAMES)]][i // len(TOOL_NAMES)] for i in range(count)]


def build(seed: int = SEED) -> tuple[list[Sample], list[Sample], Counter]:
    """Build (train, eval, defect counts); deterministic for a given seed."""
    rng = random.Random(seed)
    eval_set: list[Sample] = []
    train: list[Sample] = []

    n_eval_per_tool = -(-EVAL_COUNTS["tool"] // len(TOOL_NAMES))
    eval_tools, train_tools = {}, {}
    for name in TOOL_NAMES:
        eval_tools[name], train_tools[name] = split(TOOL_POOLS[name](), n_eval_per_tool, rng)
    eval_set += round_robin(eval_tools, EVAL_COUNTS["tool"])
    train += round_robin(train_tools, TRAIN_COUNTS["tool"])

    defects: Counter = Counter()
    for i in range(TRAIN_COUNTS["invalid"]):
        defect = DEFECTS[i % len(DEFECTS)]
        base = rng.choice(train_tools[TOOL_NAMES[i % len(TOOL_NAMES)]])
        train.append(invalid_sample(base, defect, rng))
        defects[defect] += 1

    eval_part, train_part = split(control_pool(), EVAL_COUNTS["control"], rng)
    eval_set += eval_part
    train += cycle(train_part, TRAIN_COUNTS["control"])

    for kind, make in (
        ("privacy_chat", privacy_chat_sample),
        ("privacy_tool", lambda r: privacy_tool_sample(r, train_tools)),
    ):
        pool = sample_unique(make, EVAL_COUNTS[kind] + TRAIN_COUNTS[kind], rng)
        eval_set += pool[: EVAL_COUNTS[kind]]
        train += pool[EVAL_COUNTS[kind] :]

    rng.shuffle(train)
    rng.shuffle(eval_set)
    return finalize(train, "train"), finalize(eval_set, "eval"), defects


def finalize(samples: list[Sample], split_name: str) -> list[Sample]:
    """Number the samples and drop build-only keys."""
    return [
        {"id": f"{split_name}-{i:05d}", **{k: v for k, v in s.items() if not k.startswith("_")}}
        for i, s in enumerate(samples, start=1)
    ]


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def jsonl(samples: list[Sample]) -> str:
    """One compact, key-sorted JSON object per line."""
    return "".join(json.dumps(s, sort_keys=True, separators=(",", ":")) + "\n" for s in samples)


def corpus(train: list[Sample]) -> str:
    """Tokenizer text: each train prompt, then its target, one per line."""
    return "".join(f"{s['prompt']}\n{s['target']}\n" for s in train)


def kind_counts(samples: list[Sample]) -> str:
    """'tool N, control N, privacy N' for the README."""
    counts = Counter(s["kind"] for s in samples)
    return ", ".join(f"{kind} {counts[kind]}" for kind in ("tool", "control", "privacy"))


def readme(train: list[Sample], eval_set: list[Sample], defects: Counter) -> str:
    """README.md text, including the current counts."""
    invalid = sum(defects.values())
    defect_list = ", ".join(f"{d} {defects[d]}" for d in DEFECTS)
    return f"""# Toy tool-calling dataset

Generated by `generate.py` (standard library only, fixed seed {SEED}); do not
edit the outputs, README included, by hand. Regenerate with

    python specs/data/toy/generate.py

which rewrites every file below byte-for-byte identically.
`tests/test_toy_data.py` checks that the committed files match a fresh run.

## Files

- `tools.json`: the tool registry, `{{"tools": [{{"name", "description",
  "parameters": {{"type": "object", "properties": {{arg: {{"type": ...}}}},
  "required": [...]}}}}]}}`.
  Tools: {", ".join(f"`{n}`" for n in TOOL_NAMES)}.
- `train.jsonl`: training samples, one JSON object per line
  (`sort_keys=True, separators=(",", ":")`). Prompts come from small
  templated pools, so some repeat: {len({s["prompt"] for s in train})} distinct prompts.
- `eval.jsonl`: evaluation samples, same format; all valid, and no prompt
  also occurs in train (each pool is split before train is drawn).
- `corpus.txt`: tokenizer training text, each train prompt and then its
  target on its own line, in train order.

## Sample schema

```
{{"id": "train-00001",            // or "eval-00001"
 "kind": "tool" | "control" | "privacy",
 "prompt": "<user request>",
 "target": "<assistant text>",
 "tool_call": {{"name": ..., "arguments": {{...}}}} | null,
 "tool_result": "<text>" | null,
 "integration": ["<substring of the final answer stating the tool result>"],
 "pii": ["<personal data in the prompt that must never appear in the target>"]}}
```

- Tool target: `<think>plan</think><tool_call>JSON</tool_call><tool_result>result</tool_result>answer`,
  where JSON is `json.dumps(tool_call, sort_keys=True, separators=(",", ":"))`
  and the answer contains every `integration` string.
- Control target: `<think>plan</think>answer`; no tool call, no result, no integration.
- Privacy: the prompt holds fake personal data (names, 555-01xx phone numbers,
  `@example.com` emails). Half call a tool as usual and half decline; none
  contains any `pii` string in its target.

## Invalid train samples

`train.jsonl` deliberately holds {invalid} invalid tool samples ({invalid / len(train):.1%}) that the
dataset job must detect and drop; they carry no marker.
Defects: {defect_list}.

- `unknown_tool`: the call names a tool not in the registry.
- `missing_required`: a required argument is missing.
- `wrong_type`: an argument has the wrong JSON type.
- `bad_json`: the `<tool_call>` body in the target is not valid JSON (the
  `tool_call` field still holds the intended call).

## Counts

| file | total | by kind | invalid |
|---|---|---|---|
| train.jsonl | {len(train)} | {kind_counts(train)} | {invalid} |
| eval.jsonl | {len(eval_set)} | {kind_counts(eval_set)} | 0 |

The mix is 70% tool, 15% control, 15% privacy in both files (invalid samples
are kind `tool`). Targets are at most {max(len(s["target"]) for s in train + eval_set)} characters, so prompt plus
target fits a 128-token sequence with a 512-token byte-level BPE trained on
`corpus.txt` ({len(corpus(train).encode())} bytes).
"""


def main(out_dir: Path | str = HERE) -> None:
    """Write tools.json, train.jsonl, eval.jsonl, corpus.txt and README.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, eval_set, defects = build()
    files = {
        "tools.json": json.dumps(registry(), sort_keys=True, indent=2) + "\n",
        "train.jsonl": jsonl(train),
        "eval.jsonl": jsonl(eval_set),
        "corpus.txt": corpus(train),
        "README.md": readme(train, eval_set, defects),
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
