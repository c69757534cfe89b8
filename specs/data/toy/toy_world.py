"""The toy world: the tool registry, the target markers and the facts and phrasings of each tool.

Data only (plus ``registry()``, the tools.json text's source); the samples are built from
it in ``toy_samples.py``. Part of the generator run as ``python specs/data/toy/generate.py``.
"""

from __future__ import annotations

from typing import Any

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
