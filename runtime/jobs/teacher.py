"""The teacher job: train (or load) a Llama teacher and write its top-k targets for distillation.

Inputs: the tokenizer folder ``inputs["tokenizer"]["tokenizer"]`` (and its ``report``, whose
``model_vocab_size`` an ``hf_local`` teacher must match) and the dataset folder
``inputs["dataset"]["data"]`` (the ``train`` and ``val`` row shards and ``.jsonl``, see ``dataset.py``).

``params.kind == "train"``: a ``transformers.LlamaForCausalLM`` built from ``params.architecture``
and trained from ``params.seed`` on the train split only: next-token cross-entropy on the target
positions (``loss_mask`` shifted by one), batches of ``micro_batch`` rows cropped to the shorter
of ``seq_len`` and the batch's longest row, AdamW with the fixed choices below, linear warmup then
cosine decay. Batch order comes from a seeded generator, so the same inputs give the same weights
and bit-identical targets on the same CPU machine (on CUDA, kernels such as the embedding backward
use atomics and may differ in the last bits from run to run).

``params.kind == "hf_local"``: a local ``save_pretrained`` folder (``ctx.resolve(path)``) of any
transformers-native causal LM, loaded with ``AutoModelForCausalLM`` from safetensors with no
remote code (bf16 + SDPA on CUDA, sharded with accelerate's ``device_map`` over several GPUs;
fp32 + eager on CPU). Refused: ``auto_map`` in ``config.json``, a ``model_type`` transformers has
no causal LM for, pickled weights, a tokenizer beside the model whose token->id map differs from
the student's (the first differing ids are named), and fewer logit rows than the tokenizer and
data need. Logit rows beyond the tokenizer (padded embeddings) are dropped by rule before top-k.

Outputs: ``out/model`` (``save_pretrained``), ``out/targets`` (``{train,val}.safetensors`` and
``index.json``, layout and cache in ``teacher_targets.py``) and ``out/report.json`` (train loss,
val cross-entropy and next-token accuracy on target positions, cache hits and misses, provenance).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from compiler.reading.vocab import vocabulary_differences
from runtime.distributed.launch import run_or_launch
from runtime.distributed.world import World, join, pick_device

from runtime.model.pretrained import PretrainedError, expected_scaling, read_config, weight_files

from .teacher_targets import TargetCache, split_targets, weights_sha256
from .teacher_train import BETAS, GRAD_CLIP, MIN_LR_FRACTION, WARMUP_FRACTION, WEIGHT_DECAY, masked_ce, rows_per_rank, train
from .tokenizer import TokenizerJobError, load_tokenizer, write_report

# Eager attention: deterministic and, at the toy's sizes, as fast as sdpa on CPU.
ATTN = "eager"
TARGET_SPLITS = ("train", "val")
EVAL_BATCH = 32
LOSS_WINDOW = 10  # steps averaged for the first and final train loss


class TeacherJobError(RuntimeError):
    """A teacher or input the job cannot use; the message names the file and the fix."""


def _load_split(data: Path, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from runtime.data.shards import RowSource, ShardError

    try:
        source = RowSource(data, split, rebuild="the dataset job")
        arrays = {name: source.read_all(name).numpy() for name in source.names}
        rows = (data / f"{split}.jsonl").read_text(encoding="utf-8").count("\n")
    except ShardError as exc:
        raise TeacherJobError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable dataset file is the same user error
        raise TeacherJobError(f"dataset split '{split}' in {data} (or its .jsonl) is unreadable: {exc}; rerun the dataset "
                              "job") from exc
    missing = {"input_ids", "attention_mask", "loss_mask"} - set(arrays)
    if missing or arrays["input_ids"].shape[0] != rows:
        raise TeacherJobError(f"{data}/{split}: missing tensors {sorted(missing)} or row count differs from {split}.jsonl "
                              f"({rows} rows); rerun the dataset job")
    return arrays, arrays["attention_mask"].sum(axis=1).astype(np.int64)


def _llama_config(arch, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.d_model, num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads, num_key_value_heads=arch.n_kv_heads, head_dim=arch.d_head,
        intermediate_size=arch.mlp_hidden, hidden_act="silu", rms_norm_eps=arch.norm_eps,
        rope_parameters={"rope_theta": arch.rope_theta, **(expected_scaling(arch.rope_scaling) or {"rope_type": "default"})},
        max_position_embeddings=arch.max_context, tie_word_embeddings=arch.tie_embeddings, attention_dropout=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attn_implementation=ATTN,
    )


def load_hf_folder(folder: Path, device: torch.device):
    """Any transformers-native causal LM from a local folder: safetensors only, remote code off.

    On CUDA in bf16 with SDPA attention, sharded over every visible GPU (accelerate's device_map)
    when there is more than one; on CPU in fp32 with eager attention (deterministic top-k)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = read_config(folder, "teacher.path")
        weight_files(folder, "teacher.path")
    except PretrainedError as exc:
        raise TeacherJobError(str(exc)) from exc
    family = cfg.get("model_type")
    if family not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise TeacherJobError(f"teacher {folder}: model_type {family!r} is not a transformers-native causal LM "
                              "(AutoModelForCausalLM has no class for it without remote code); use such a checkpoint")
    kwargs: dict = {"trust_remote_code": False, "local_files_only": True, "use_safetensors": True}
    if device.type == "cuda":
        kwargs |= {"dtype": torch.bfloat16, "attn_implementation": "sdpa",
                   "device_map": "auto" if torch.cuda.device_count() > 1 else {"": device.index or 0}}
    else:
        kwargs |= {"dtype": torch.float32, "attn_implementation": ATTN}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise TeacherJobError(f"teacher {folder} does not load with AutoModelForCausalLM: {exc}") from exc
    return model if "device_map" in kwargs else model.to(device)


def _check_tokenizers(folder: Path, student_tokenizer: Path) -> None:
    """Logit KD compares distributions id by id: the teacher's tokenizer (saved beside it) must map
    every token string, special tokens included, to the same id as the student's."""
    if not (folder / "tokenizer.json").is_file():
        raise TeacherJobError(f"teacher {folder}: no tokenizer.json beside the model; save the teacher's tokenizer "
                              "with it (tokenizer.save_pretrained(folder)): logit KD needs to know its ids mean the "
                              "student's tokens")
    problems = vocabulary_differences(_token_ids(folder / "tokenizer.json"), _token_ids(Path(student_tokenizer) / "tokenizer.json"))
    if problems:
        raise TeacherJobError(f"teacher {folder}: its tokenizer differs from the student's, so its logits cannot be "
                              f"distilled id by id: {problems}; distil from a teacher with the student's tokenizer")


def _token_ids(path: Path) -> dict[str, int]:
    """token string -> id, added tokens included, read from tokenizer.json itself (transformers'
    AutoTokenizer may add a family's default special tokens on load; the ids are what the file says)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is one user error whatever tokenizers raises
        raise TeacherJobError(f"{path} is not a readable tokenizer.json ({exc})") from exc


def check_vocab(model, where: str, tok, tok_report: Path | None, arrays: dict[str, dict[str, np.ndarray]]) -> int:
    """The number of logit rows the targets are taken from: the tokenizer's size. Rows beyond it
    (the padding of e.g. 152,064 embedding rows for a 151,643-token tokenizer) are dropped by rule,
    never ranked; a teacher with fewer rows than the tokenizer and the data need is refused."""
    vocab = model.config.vocab_size
    used = [int(a["input_ids"][a["attention_mask"] > 0].max(initial=0)) for a in arrays.values()]
    need = max(used + [len(tok) - 1] + list(tok.all_special_ids)) + 1
    if vocab < need:
        raise TeacherJobError(f"{where}: vocab_size {vocab} does not cover the tokenizer and the data (token ids up to "
                              f"{need - 1}); use a teacher with the dataset's tokenizer")
    if tok_report is not None and tok_report.is_file():
        student = json.loads(tok_report.read_text(encoding="utf-8")).get("model_vocab_size")
        if student is not None and need > student:
            raise TeacherJobError(f"{where}: token ids up to {need - 1} do not fit the student's {student} embedding rows")
    longest = max((int(a["attention_mask"].sum(axis=1).max(initial=0)) for a in arrays.values()), default=0)
    if longest > model.config.max_position_embeddings:
        raise TeacherJobError(f"{where}: max_position_embeddings {model.config.max_position_embeddings} is shorter "
                              f"than the longest dataset row ({longest} tokens); use a teacher with a longer context "
                              "or shorter data (shapes.prefill sets the dataset's max_seq_len)")
    return min(vocab, len(tok))


@torch.no_grad()
def _evaluate(model, arrays: dict[str, np.ndarray], lengths: np.ndarray, device) -> dict[str, float]:
    ce = correct = count = 0.0
    for start in range(0, len(lengths), EVAL_BATCH):
        sl = slice(start, start + EVAL_BATCH)
        n = int(lengths[sl].max())
        ids = torch.from_numpy(arrays["input_ids"][sl, :n]).to(device, torch.long)
        mask = torch.from_numpy(arrays["loss_mask"][sl, :n]).to(device)
        c, k, m = masked_ce(model, ids, mask)
        ce, correct, count = ce + float(c), correct + float(k), count + float(m)
    return {"val_ce": ce / count if count else None, "val_accuracy": correct / count if count else None,
            "val_target_tokens": int(count)}  # None: an empty val split


def write_targets(model, folder: Path, splits, top_k: int, teacher_sha: str, cache_dir, device, ctx,
                   rows: int) -> TargetCache:
    from runtime.data.shards import write_shards

    folder.mkdir(parents=True, exist_ok=True)
    limited = rows < model.config.vocab_size  # padded rows dropped: a different ranking, a different cache entry
    cache = TargetCache(cache_dir, f"{teacher_sha}/rows={rows}" if limited else teacher_sha, top_k)
    update = ctx.progress("teacher: top-k targets", total=sum(len(lengths) for _, lengths in splits.values()))
    index = {"top_k": top_k, "teacher_sha256": teacher_sha, "splits": {}}
    for split, (arrays, lengths) in splits.items():
        tensors, shas = split_targets(model, arrays["input_ids"], lengths, top_k, cache, device, update,
                                      rows if limited else None)
        info = json.dumps({"split": split, "top_k": top_k, "teacher_sha256": teacher_sha}, sort_keys=True)
        write_shards(folder, split, {k: np.asarray(v) for k, v in tensors.items()}, None, {"modelspec": info})
        index["splits"][split] = {"rows": len(lengths), "T": tensors["topk_ids"].shape[1], "sample_sha256": shas}
    (folder / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return cache


def run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx) -> dict:
    if params.kind == "train":  # training runs on training.resources (several processes: runtime.distributed)
        return run_or_launch("teacher", params, inputs, out, ctx, check=lambda size: rows_per_rank(params.micro_batch, size),
                             body=lambda: _run(params, inputs, out, ctx))
    return _run(params, inputs, out, ctx)


def _run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx) -> dict:
    world = join(ctx.resources) if params.kind == "train" else None
    try:
        return _teacher(params, inputs, Path(out), ctx, world)
    finally:
        if world is not None:
            world.close(clean=False)  # after an error: leave without waiting for peers (a no-op once closed)


def _teacher(params, inputs: dict[str, dict[str, Path]], out: Path, ctx, world: World | None) -> dict:
    from transformers import LlamaForCausalLM

    start = time.perf_counter()
    device = world.device if world else pick_device(ctx.resources["device"])
    try:
        tok = load_tokenizer(inputs["tokenizer"]["tokenizer"])
        data = Path(inputs["dataset"]["data"])
    except (KeyError, TokenizerJobError) as exc:
        raise TeacherJobError(f"the teacher job needs the tokenizer and dataset outputs: {exc}") from exc
    splits = {s: _load_split(data, s) for s in TARGET_SPLITS}
    if params.kind == "train":
        where = "teacher.architecture"
        torch.manual_seed(params.seed)
        model = LlamaForCausalLM(_llama_config(params.architecture, tok))
        model = model.to(device, torch.float32)
    elif params.kind == "hf_local":
        try:
            folder = ctx.resolve(params.path)
        except RuntimeError as exc:
            raise TeacherJobError(f"teacher.path: {exc}") from exc
        where = f"teacher {folder}"
        if not Path(folder).is_dir():  # a drafter's teacher is its worker's release, made by another spec's run
            raise TeacherJobError(f"teacher.path {params.path!r} does not exist (looked at {folder}); when it is a worker's "
                                  "release, publish the worker first: modelspec publish <worker spec> --to <dir>, "
                                  "with teacher.path at <dir>/current/hf")
        model = load_hf_folder(folder, device)
        _check_tokenizers(folder, inputs["tokenizer"]["tokenizer"])
    else:  # pragma: no cover - params are typed
        raise TeacherJobError(f"unknown teacher kind {params.kind!r}")
    rows = check_vocab(model, where, tok, inputs["tokenizer"].get("report"), {s: a for s, (a, _) in splits.items()})
    if params.top_k > rows:
        raise TeacherJobError(f"teacher.top_k {params.top_k} exceeds the {rows} logit rows of the shared vocabulary; "
                              "lower teacher.top_k")

    losses = []
    if world is not None:
        if len(splits["train"][1]) == 0:
            raise TeacherJobError("the dataset's train split is empty: nothing to train the teacher on; the "
                                  "dataset job's report.json says why samples were dropped")
        losses, model = train(model, params, *splits["train"], world, ctx)
        world.close()  # rank 0 goes on alone
        if not world.main:
            return {}
    train_seconds = time.perf_counter() - start
    model.eval()
    metrics = _evaluate(model, *splits["val"], device)
    model.save_pretrained(str(out / "model"))
    tok.save_pretrained(str(out / "model"))  # beside the weights: the folder is itself a valid hf_local teacher
    teacher_sha = weights_sha256(model)
    cache = write_targets(model, out / "targets", splits, params.top_k, teacher_sha, ctx.cache_dir, device, ctx, rows)

    window = max(1, min(LOSS_WINDOW, len(losses)))
    metrics.update({
        "steps": len(losses), "top_k": params.top_k, "teacher_sha256": teacher_sha,
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_rows_ranked": rows,
        "vocab_rows_dropped": model.config.vocab_size - rows,
        **({"train_loss_first": sum(losses[:window]) / window, "train_loss_final": sum(losses[-window:]) / window,
            "train_seconds": round(train_seconds, 3)} if losses else {}),
        **{f"rows_{s}": len(lengths) for s, (_, lengths) in splits.items()},
        "cache_hits": cache.hits, "cache_misses": cache.misses, "cache_rejected": cache.rejected,
        "seconds": round(time.perf_counter() - start, 3),
    })
    report = {**metrics, "kind": params.kind, "device": device.type, "world_size": world.size if world else 1,
              "strategy": world.strategy if world else "none", "provenance": ctx.provenance,
              "optimizer": {"name": "adamw", "betas": list(BETAS), "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP,
                            "warmup_fraction": WARMUP_FRACTION, "min_lr_fraction": MIN_LR_FRACTION} if losses else None,
              "attn_implementation": ATTN}
    write_report(out, report)
    return metrics
