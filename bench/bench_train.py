"""Per-step overhead of the `train` job's loop against a bare torch loop, same model and batch.

    .venv/bin/python bench/bench_train.py [--steps N] [--rounds R]

The bare loop is the minimum any trainer does per step: forward, the same loss terms
(runtime.train.losses.compute, weighted), backward, clip, AdamW step, on one fixed batch.
The job's loop (runtime.train.loop.Trainer.run) adds everything the job does per step: batch
selection and cropping, learning-rate and loss-weight schedules, per-loss gradient norms
every GRAD_NORM_EVERY steps with the balance alert, JSONL and TensorBoard metrics, progress
events and an atomic checkpoint (checkpoint_every is set so each round writes one).
Both run the toy spec's student with its micro_batch, at a fixed sequence length, in
alternating rounds in one process (this machine is noisy); the ratio of medians is reported.
Goal (issue 3): overhead <= 5%. Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compiler.planning.params import TrainParams  # noqa: E402
from runtime.distributed.world import accumulation, join  # noqa: E402
from runtime.model.student import Student  # noqa: E402
from runtime.train import losses  # noqa: E402
from runtime.train.data import Split, make_batch  # noqa: E402
from runtime.train.loop import Trainer, make_optimizer  # noqa: E402
from runtime.train.schedules import loss_weight  # noqa: E402

SEQ = 128


def toy_params(steps: int) -> TrainParams:
    plan = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
    p = next(j for j in plan["jobs"] if j["id"] == "train")["params"]
    tr = p["training"] | {"curriculum": [{"until_step": 10**6, "seq_len": SEQ}], "checkpoint_every": steps - 1,
                          "total_steps": 10**6}
    return TrainParams.model_validate({"training": tr, "start_step": 0, "end_step": steps}, strict=False)


def synthetic_split(tp, rows: int = 256, k: int = 16) -> Split:
    """Token rows shaped like the toy data (lengths 60..SEQ, target masks), teacher top-k from a model."""
    g = torch.Generator().manual_seed(0)
    v = tp.architecture.vocab_size
    ids = torch.randint(9, v, (rows, SEQ), generator=g)
    lengths = torch.randint(60, SEQ + 1, (rows,), generator=g)
    pos = torch.arange(SEQ)[None]
    att = (pos < lengths[:, None]).long()
    loss = ((pos >= 20) & (pos < lengths[:, None])).long()
    ids = ids * att
    teacher = Student(tp.architecture, seed=3).eval()
    with torch.no_grad():
        top = teacher(ids, att).topk(k, dim=-1)
    tensors = {"input_ids": ids, "attention_mask": att, "loss_mask": loss, "tool_name_mask": loss * (pos % 7 == 0),
               "json_args_mask": loss * (pos % 3 == 0), "integration_mask": loss * (pos % 5 == 0),
               "topk_ids": top.indices, "topk_logits": top.values}
    return Split(tensors)


def bare(tp, split: Split, steps: int) -> float:
    model = Student(tp.architecture, seed=tp.seed)
    opt = make_optimizer(model, tp)
    batch = make_batch(split, list(range(tp.micro_batch)), SEQ, torch.device("cpu"))
    weights = {n: loss_weight(c["weight"], 1000) for n, c in tp.losses.items()}
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        logits = model(batch["input_ids"], batch["attention_mask"])
        terms = losses.compute(logits, batch, tp.losses, tp.special_token_ids)
        sum(weights[n] * v for n, v in terms.items()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tp.optimizer["grad_clip"])
        opt.step()
    return (time.perf_counter() - start) / steps


def job_loop(tp, split: Split, steps: int, end_step: int) -> float:
    model = Student(tp.architecture, seed=tp.seed)
    world = join({"device": "cpu", "strategy": "none"})  # one process
    trainer = Trainer(tp=tp, model=model, optimizer=make_optimizer(model, tp), train=split, world=world,
                      grad_accum=accumulation(tp.global_batch, tp.micro_batch, world.size), start_step=0, end_step=end_step)
    events = []
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        trainer.run(Path(work), {}, {"job": {"key": "bench"}}, False, "train",
                    lambda d, t=None: (lambda n=1, **f: events.append((n, f))), lambda m: None)
        return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tp = toy_params(args.steps).training
    split = synthetic_split(tp)
    # every row of the synthetic split is full length for the bare loop's fixed batch; the job
    # crops to the longest row in its batch, which is SEQ for these lengths with high probability
    bare(tp, split, 3)
    job_loop(tp, split, 3, 3)  # warm up both paths (imports, allocator)
    rows = []
    for r in range(args.rounds):
        b = bare(tp, split, args.steps)
        j = job_loop(tp, split, args.steps, args.steps)
        rows.append({"round": r, "bare_s_per_step": b, "job_s_per_step": j, "overhead": j / b - 1})
        print(f"round {r}: bare {b * 1000:.1f} ms/step, job {j * 1000:.1f} ms/step, overhead {100 * (j / b - 1):+.1f}%")
    med_b = statistics.median(x["bare_s_per_step"] for x in rows)
    med_j = statistics.median(x["job_s_per_step"] for x in rows)
    result = {"benchmark": "train step overhead vs bare torch loop", "steps_per_round": args.steps, "rounds": rows,
              "median_bare_ms": med_b * 1000, "median_job_ms": med_j * 1000, "overhead": med_j / med_b - 1,
              "median_round_overhead": statistics.median(x["overhead"] for x in rows),
              "goal": "<= 0.05", "torch_threads": torch.get_num_threads()}
    out = ROOT / "bench" / "results" / "train.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"overhead of medians {100 * result['overhead']:+.1f}%, median of per-round overheads "
          f"{100 * result['median_round_overhead']:+.1f}% (goal <= 5%) -> {out}")


if __name__ == "__main__":
    main()
