"""Sample builders: target rendering, one candidate pool per tool, control and privacy samples.

Each pool holds every prompt of its kind once (``generate.py`` splits pools into eval and
train); privacy samples are drawn with the run's one ``random.Random``.
"""

from __future__ import annotations

import json
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from toy_world import (AMOUNTS, CALL, CALL_END, CONTACT_PHRASES, CONTACT_QUERIES, CURRENCY_PHRASES, DAYS, EVENT_PHRASES,
                       EVENT_TITLES, HOURS, PEOPLE, RESULT, RESULT_END, THINK, THINK_END, TIMER_LABELS, TIMER_MINUTES,
                       TIMER_PHRASES, TOOL_NAMES, UNITS, USD_RATES, WEATHER, WEATHER_PHRASES, Sample)


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
