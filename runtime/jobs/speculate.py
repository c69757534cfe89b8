"""The `speculate` job: a drafter's acceptance rate against its worker (greedy speculative decoding).

Inputs: the drafter's checkpoint (the one input with a ``checkpoint`` output: ``qat``, else
``train``), the worker (``inputs["teacher"]["model"]``: a drafter distils from its worker, its
release's ``hf/`` folder or HF export, so the teacher job's model *is* the worker) and the eval
split of the dataset job. On the first ``params.prompts`` eval prompts, in row order, each is decoded
twice: by speculative decoding with ``params.k`` drafted tokens per step
(runtime/generation/speculative.py) and by the worker alone, greedily, up to ``max_new_tokens``.

Report metrics: ``acceptance_rate`` (accepted drafted tokens over drafted tokens, n: drafted
tokens), ``tokens_per_step`` (tokens emitted per worker verify call, n: calls) and
``worker_mismatches`` (prompts whose speculative output differs from the worker's own greedy output:
0 unless the two forwards disagree on a near-tie; n: prompts), with the first mismatch named.
The drafter runs in fp32 with its trained weights (the fake-quantized ones after QAT).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from compiler.planning.params import SpeculateParams
from runtime.generation.speculative import greedy, speculate
from runtime.model.checkpoint import load_student

from .eval import _checkpoint_folder, _load_eval_split, one_thread
from .teacher import load_hf_folder
from .tokenizer import write_report


class SpeculateJobError(RuntimeError):
    pass


def _prompts(data_dir: Path, special: dict, count: int) -> list[tuple[str, list[int]]]:
    meta, input_ids = _load_eval_split(data_dir, special)
    out = [(str(m["id"]), [int(t) for t in input_ids[m["row"], :m["prompt_len"]]]) for m in meta[:count]]
    if not out:
        raise SpeculateJobError(f"{data_dir}: the eval split has no prompts")
    return out


def run(params: SpeculateParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict:
    out = Path(out)
    student_job, folder = _checkpoint_folder({k: v for k, v in inputs.items() if k != "teacher"})
    drafter = load_student(folder, params.architecture).eval()
    try:
        worker_model = load_hf_folder(Path(inputs["teacher"]["model"]), torch.device("cpu")).eval()
    except KeyError as exc:
        raise SpeculateJobError("the speculate job needs the worker as inputs['teacher']['model']") from exc
    prompts = _prompts(Path(inputs["dataset"]["data"]), params.special_tokens, params.prompts)
    eos = params.special_tokens["eos"].id

    def worker(ids: torch.Tensor) -> torch.Tensor:
        return worker_model(input_ids=ids).logits

    step = ctx.progress("speculative decoding", len(prompts))
    drafted = accepted = steps = emitted = halted = 0
    # a drafter with a halt head stops drafting at the token that ends the worker's turn (docs/roles.md)
    halt = drafter.halt_outputs if params.halt_threshold is not None else None
    mismatches: list[dict[str, Any]] = []
    start = time.perf_counter()
    with one_thread():
        for sid, prompt in prompts:
            room = min(params.max_new_tokens, params.max_total_tokens - len(prompt))
            s = speculate(drafter, worker, prompt, params.k, room, eos, halt=halt,
                          threshold=params.halt_threshold or 0.5)
            halted += s.halted
            ref = greedy(worker, prompt, room, eos)
            drafted, accepted, steps, emitted = drafted + s.drafted, accepted + s.accepted, steps + s.steps, emitted + len(s.tokens)
            if s.tokens != ref:
                at = next((i for i, (a, b) in enumerate(zip(s.tokens, ref)) if a != b), min(len(s.tokens), len(ref)))
                mismatches.append({"id": sid, "position": at, "speculative": s.tokens[at: at + 1], "worker": ref[at: at + 1]})
            step(1, acceptance=accepted / drafted if drafted else 0.0)
    metrics = {
        "acceptance_rate": {"value": accepted / drafted if drafted else 0.0, "n": drafted},
        "tokens_per_step": {"value": emitted / steps if steps else 0.0, "n": steps},
        "worker_mismatches": {"value": len(mismatches), "n": len(prompts)},
    }
    report = {"metrics": metrics, "k": params.k, "prompts": len(prompts), "drafter": student_job,
              "halt": {"threshold": params.halt_threshold, "drafts_cut": halted} if halt is not None else None,
              "seconds": time.perf_counter() - start, "mismatches": mismatches[:10], "provenance": ctx.provenance}
    write_report(out, report)
    ctx.log(f"acceptance {metrics['acceptance_rate']['value']:.3f} over {drafted} drafted tokens, "
            f"{metrics['tokens_per_step']['value']:.2f} tokens per worker call (k={params.k})")
    return {k: v["value"] for k, v in metrics.items()}
