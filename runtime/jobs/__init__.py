"""Job implementations, one module per kind, each with `run(params, inputs, out, ctx) -> metrics`.

A job that completes but judges its inputs unacceptable (the gates job) returns
``metrics["_verdict"] = {"ok": False, "message": ...}``: its outputs are kept (the report is
the point), the run fails and nothing downstream runs; a cached failing verdict fails again.

Modules are imported lazily inside worker processes, so torch is imported once per worker.
"""

from __future__ import annotations

import importlib

IMPLEMENTED = {
    "tokenizer": "runtime.jobs.tokenizer",
    "dataset": "runtime.jobs.dataset",
    "teacher": "runtime.jobs.teacher",
    "generate": "runtime.jobs.generate",
    "train": "runtime.jobs.train",
    "qat": "runtime.jobs.qat",
    "eval": "runtime.jobs.eval",
    "speculate": "runtime.jobs.speculate",
    "export": "runtime.jobs.export",
    "convert": "runtime.jobs.convert",
    "gates": "runtime.jobs.gates",
    "verify": "runtime.jobs.verify",
    "parity": "runtime.jobs.parity",
    "publish": "runtime.jobs.publish",
}

# Params attributes that name files read by the job: their content is part of the cache key.
EXTERNAL_INPUTS = {
    "tokenizer": ("source_path", "chat_template"),
    "dataset": ("train", "eval", "tool_registry"),
    "teacher": ("path",),
    "generate": ("prompts",),
    "train": ("init_checkpoint",),
    "gates": ("speed_reports",),
}


class NotImplementedJob(RuntimeError):
    pass


def runner(kind: str):
    if kind not in IMPLEMENTED:
        raise NotImplementedJob(f"job kind '{kind}' is not implemented by this version of the runtime")
    return importlib.import_module(IMPLEMENTED[kind]).run
