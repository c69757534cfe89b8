"""A generation run in its own process, for the kill -9 tests: `python -m tests.generation.engine_child ARGS.json`.

ARGS.json: {"base_url", "cache", "prompts", "in_flight", "max_tokens", "done"}; the key comes from
$TEACHER_KEY. Writes the outcome counts to the `done` file when the run finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from runtime.generation.budget import Budget, Prices
from runtime.generation.cache import ResponseCache
from runtime.generation.client import Endpoint
from runtime.generation.engine import Prompt, Settings, generate
from runtime.generation.wire import parse_completion, request_extras


def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text())
    ep = Endpoint(args["base_url"], "tiny-teacher", "TEACHER_KEY", timeout_s=30, retries=2, max_in_flight=args["in_flight"])
    settings = Settings(args["base_url"], "tiny-teacher", {"temperature": 0.0, **request_extras("vllm", 3)},
                        args["max_tokens"], tool_rounds=2)
    prompts = [Prompt(p["id"], tuple(p["messages"]), tuple(p.get("tools") or ()), p.get("fixtures") or {}) for p in args["prompts"]]
    result = asyncio.run(generate(prompts, ep, os.environ["TEACHER_KEY"], settings, ResponseCache(Path(args["cache"])),
                                  Budget(Prices()), lambda d: parse_completion(d, "vllm")))
    Path(args["done"]).write_text(json.dumps({"counts": dict(result.counts()), "sent": result.sent, "cached": result.cached}))


if __name__ == "__main__":
    main(sys.argv[1])
