"""Cross-field rules: what a single field's type cannot say.

Each rule yields `(path, message, hint)`; `validate.py` attaches file positions. Rules read the
validated spec and the resolved plans only.
"""

from __future__ import annotations

import math
import os
import re
from typing import Iterator

from compiler.analysis.catalogue import CATALOGUE
from compiler.analysis.chips import CHIPS
from compiler.schema.tokenizer import EVAL_MARKERS
from compiler.analysis.derived import derive, kernels
from compiler.analysis.estimates import Kernels, min_fsdp2_ranks, unsharded_bytes
from compiler.core.errors import Path, did_you_mean
from compiler.analysis.modules import canonical_modules, matches
from compiler.analysis.resolve import quant_plan
from compiler.core.uris import is_uri, shown, uri_problem
from compiler.schema.architecture import Heads
from compiler.schema.quantization import Quantized
from compiler.schema.spec import Spec
from compiler.schema.teacher import HfLocalTeacher, OpenAICompatibleTeacher, TrainTeacher
from compiler.reading import rules_halt, rules_judge, rules_speed, rules_teacher
from compiler.reading.rules_teacher import is_local_relative
from compiler.schema.tokenizer import BpeSource
from compiler.schema.training import Ramp, StepChange

Finding = tuple[Path, str, str | None]
REQUIRED_TOKENS = ("pad", "bos", "eos")
TOOL_TOKENS = EVAL_MARKERS  # every role's eval reads them: required at validate, never a late failure in eval
TOKEN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check(spec: Spec, spec_dir: str) -> list[Finding]:
    out: list[Finding] = []
    for rule in RULES:
        out.extend(rule(spec, spec_dir) if rule in (_paths, rules_teacher.shared_vocabulary) else rule(spec))
    return out


def _heads(h: Heads, base: Path) -> Iterator[Finding]:
    if h.d_model != h.n_heads * h.d_head:
        yield (base + ("d_model",), f"d_model {h.d_model} != n_heads * d_head = {h.n_heads} * {h.d_head} = {h.n_heads * h.d_head}",
               "set d_model = n_heads * d_head, or change n_heads or d_head")
    if h.n_heads % h.n_kv_heads:
        divisors = _divisors(h.n_heads)
        yield (base + ("n_kv_heads",), f"n_heads {h.n_heads} is not a multiple of n_kv_heads {h.n_kv_heads}",
               f"n_kv_heads must divide n_heads; valid values: {divisors}")


def _architecture(spec: Spec) -> Iterator[Finding]:
    yield from _heads(spec.architecture, ("architecture",))
    if isinstance(spec.teacher, TrainTeacher):
        yield from _heads(spec.teacher.architecture, ("teacher", "architecture"))
        if spec.teacher.seq_len > spec.architecture.max_context:
            yield (("teacher", "seq_len"), f"teacher seq_len {spec.teacher.seq_len} exceeds architecture.max_context {spec.architecture.max_context}",
                   "the teacher shares the student's RoPE and context")
    s = spec.architecture.rope.scaling
    if s != "none" and s.kind == "llama3" and s.high_freq_factor <= s.low_freq_factor:
        yield (("architecture", "rope", "scaling", "high_freq_factor"),
               f"high_freq_factor {s.high_freq_factor:g} must exceed low_freq_factor {s.low_freq_factor:g}",
               "copy both from the checkpoint's rope_scaling (Llama 3.1: low 1.0, high 4.0)")


def _tokens(spec: Spec) -> Iterator[Finding]:
    vocab = spec.architecture.vocab_size
    tokens = spec.tokenizer.special_tokens
    base: Path = ("tokenizer", "special_tokens")
    for name in REQUIRED_TOKENS:
        if name not in tokens:
            yield (base, f"missing special token '{name}'", f"add {name}: {{text: ..., id: ...}}")
    for name in TOOL_TOKENS:
        if name not in tokens:
            yield (base, f"missing special token '{name}': the eval job reads it for every role (role {spec.role})",
                   f"add {name}: {{text: ..., id: ...}} (a judge or drafter shares the worker's tool and think tokens)")
    seen_ids: dict[int, str] = {}
    seen_texts: dict[str, str] = {}
    for name, tok in tokens.items():
        if not TOKEN_NAME.match(name):
            yield (base + (name,), f"special-token name '{name}' is not [a-z][a-z0-9_]*", "use a snake_case role name")
        if tok.id >= vocab:
            yield (base + (name, "id"), f"id {tok.id} is not below architecture.vocab_size {vocab}",
                   "out-of-range ids were silently clamped by the old trainer; pick an id < vocab_size or grow the vocabulary")
        if tok.id in seen_ids:
            yield (base + (name, "id"), f"id {tok.id} is already used by '{seen_ids[tok.id]}'", "give every special token its own id")
        if tok.text in seen_texts:
            yield (base + (name, "text"), f"text {tok.text!r} is already used by '{seen_texts[tok.text]}'", "give every special token its own text")
        if any(c.isspace() for c in tok.text):
            yield (base + (name, "text"), f"text {tok.text!r} contains whitespace", "special-token texts are single tokens without spaces")
        seen_ids.setdefault(tok.id, name)
        seen_texts.setdefault(tok.text, name)
    src = spec.tokenizer.source
    if isinstance(src, BpeSource):
        if src.vocab_size > vocab:
            yield (("tokenizer", "source", "vocab_size"), f"tokenizer vocab_size {src.vocab_size} exceeds architecture.vocab_size {vocab}",
                   "the embedding must have a row for every token id")
        top = max((t.id for t in tokens.values()), default=-1)
        if top >= src.vocab_size:
            yield (("tokenizer", "source", "vocab_size"), f"tokenizer vocab_size {src.vocab_size} leaves no room for special-token id {top}",
                   "special tokens are part of the trained vocabulary: vocab_size must exceed every special-token id")


def _shapes(spec: Spec) -> Iterator[Finding]:
    prefill, max_ctx = spec.shapes.prefill, spec.architecture.max_context
    for i, t in enumerate(prefill):
        if t > max_ctx:
            yield (("shapes", "prefill", i), f"prefill shape {t} exceeds architecture.max_context {max_ctx}", "drop the shape or raise max_context")
        if i and t == prefill[i - 1] or t in prefill[:i]:
            yield (("shapes", "prefill", i), f"prefill shape {t} is listed twice", "list each shape once")
        elif i and t < prefill[i - 1]:
            yield (("shapes", "prefill", i), f"prefill shapes are not ascending ({prefill[i - 1]} then {t})", f"write them sorted: {sorted(set(prefill))}")
    dec = spec.shapes.decode
    if dec.enabled:
        if dec.cache_len > max_ctx:
            yield (("shapes", "decode", "cache_len"), f"cache_len {dec.cache_len} exceeds architecture.max_context {max_ctx}", "lower cache_len or raise max_context")
        if max(prefill) > dec.cache_len:
            yield (("shapes", "decode", "cache_len"), f"cache_len {dec.cache_len} is shorter than the longest prefill shape {max(prefill)}",
                   "prefill writes its keys and values into the decode cache")
    for i, p in enumerate(spec.deployment.profiles):
        if p.context > max_ctx:
            yield (("deployment", "profiles", i, "context"), f"context {p.context} exceeds architecture.max_context {max_ctx}", "lower the profile's context")
    parity = spec.export.parity
    if isinstance(parity.lengths, list):
        for i, t in enumerate(parity.lengths):
            if t not in prefill:
                yield (("export", "parity", "lengths", i), f"parity length {t} is not a prefill shape",
                       f"choose among shapes.prefill {list(prefill)}, or write smallest or all")
    if dec.enabled and parity.decode_steps > dec.cache_len:
        yield (("export", "parity", "decode_steps"), f"decode_steps {parity.decode_steps} exceeds shapes.decode.cache_len {dec.cache_len}",
               "the decode function's samples decode from position 0: keep decode_steps within the cache")


def _training(spec: Spec) -> Iterator[Finding]:
    tr = spec.training
    base: Path = ("training",)
    last = 0
    for i, stage in enumerate(tr.curriculum):
        if stage.until_step <= last:
            yield (base + ("curriculum", i, "until_step"), f"until_step {stage.until_step} is not after the previous stage's {last}", "until_step must strictly increase")
        last = max(last, stage.until_step)
        if stage.seq_len not in spec.shapes.prefill:
            yield (base + ("curriculum", i, "seq_len"), f"seq_len {stage.seq_len} is not an exported prefill shape",
                   f"train on shapes the model is exported for: {spec.shapes.prefill}")
    final = tr.curriculum[-1].until_step
    if final != tr.steps:
        yield (base + ("curriculum", len(tr.curriculum) - 1, "until_step"), f"the last until_step {final} != training.steps {tr.steps}",
               "the curriculum must cover every step exactly")
    if tr.lr_schedule.warmup_steps >= tr.steps:
        yield (base + ("lr_schedule", "warmup_steps"), f"warmup_steps {tr.lr_schedule.warmup_steps} is not shorter than training.steps {tr.steps}", "shorten the warmup")
    if tr.lr_schedule.min_lr > tr.optimizer.lr:
        yield (base + ("lr_schedule", "min_lr"), f"min_lr {tr.lr_schedule.min_lr} exceeds optimizer.lr {tr.optimizer.lr}", "min_lr is where decay ends")
    if tr.checkpoint_every > tr.steps:
        yield (base + ("checkpoint_every",), f"checkpoint_every {tr.checkpoint_every} exceeds training.steps {tr.steps}", "checkpoint at least once")
    active = 0
    for name, loss in tr.losses:
        if loss is None:
            continue
        w = loss.weight
        path = base + ("losses", name, "weight")
        if isinstance(w, Ramp):
            active += 1
            if w.ramp.steps > tr.steps:
                yield (path + ("ramp", "steps"), f"ramp of {w.ramp.steps} steps is longer than training.steps {tr.steps}", "schedules must fit inside training")
        elif isinstance(w, StepChange):
            active += 1
            if w.step.at_step >= tr.steps:
                yield (path + ("step", "at_step"), f"at_step {w.step.at_step} is not inside training.steps {tr.steps}", "schedules must fit inside training")
        else:
            active += w > 0
    if not active:
        yield (base + ("losses",), "no loss term has a weight above 0", "enable at least kl or ce_ground_truth")
    res = tr.resources
    if res.device == "mps" and res.nproc * res.nodes > 1:
        yield (base + ("resources", "nproc"), f"{res.nproc * res.nodes} processes on mps: torch.distributed has no mps backend",
               "train on mps with nproc 1 and nodes 1, or use cuda")
    if tr.qat.enabled:
        kd_steps = math.floor(tr.steps * tr.qat.start_fraction)
        if kd_steps < 1 or kd_steps >= tr.steps:
            yield (base + ("qat", "start_fraction"), f"start_fraction {tr.qat.start_fraction} leaves {kd_steps} KD steps of {tr.steps}", "both KD and QAT need at least one step")


def _quantization(spec: Spec) -> Iterator[Finding]:
    modules = canonical_modules(spec.architecture)
    plan = {q.module: q for q in quant_plan(spec, modules)}
    weights = spec.quantization.weights
    recipes = [(("quantization", "weights", "default"), weights.default, "quantization.weights.default")]
    recipes += [(("quantization", "weights", "rules", i), r, f"quantization.weights.rules[{i}]") for i, r in enumerate(weights.rules)]
    for path, recipe, source in recipes:
        if isinstance(recipe, Quantized):
            if recipe.granularity == "per_block" and recipe.block_size is None:
                yield (path + ("granularity",), "per_block needs block_size", "add block_size (e.g. 32)")
            if recipe.granularity != "per_block" and recipe.block_size is not None:
                yield (path + ("block_size",), f"block_size only applies to per_block, not {recipe.granularity}", "remove block_size or use per_block")
        if source == "quantization.weights.default":
            continue
        hits = [m for m in modules if matches(recipe.match, m.name)]
        wins = [name for name, q in plan.items() if q.source == source]
        if not hits:
            hint = did_you_mean(recipe.match, [m.name for m in modules]) or "module names are Llama's: embed_tokens, layers.{i}.self_attn.q_proj, layers.{i}.mlp.down_proj, norm, lm_head"
            if recipe.match == "lm_head" and spec.architecture.tie_embeddings:
                hint = "tie_embeddings is true, so lm_head shares embed_tokens' weight: match embed_tokens instead"
            yield (path + ("match",), f"rule '{recipe.match}' matches no module of the architecture", hint)
        elif not any(m.quantizable for m in hits):
            yield (path + ("match",), f"rule '{recipe.match}' matches only norms, which are never quantized", "match linear or embedding modules")
        elif not wins:
            yield (path + ("match",), f"rule '{recipe.match}' is shadowed: earlier rules win every module it matches", "move it before the rules that shadow it, or remove it")
    for q in plan.values():
        if q.block_size:
            in_features = q.shape[-1]
            if in_features % q.block_size:
                path = ("quantization", "weights", "default") if q.source.endswith("default") else ("quantization", "weights", "rules", int(q.source.split("[")[1][:-1]))
                yield (path + ("block_size",), f"block_size {q.block_size} does not divide the {in_features} in-features of {q.module}",
                       f"use a divisor of {in_features}, e.g. {_divisor_near(in_features, q.block_size)}")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _divisor_near(n: int, want: int) -> int:
    return min(_divisors(n), key=lambda d: (abs(d - want), d))


def _precision(spec: Spec) -> Iterator[Finding]:
    names = [m.name for m in canonical_modules(spec.architecture)]
    seen: set[str] = set()
    for i, island in enumerate(spec.precision.islands):
        key = f"module:{island.module}" if hasattr(island, "module") else f"op:{island.op}"
        if key in seen:
            yield (("precision", "islands", i), f"island {key} is listed twice", "list each island once")
        seen.add(key)
        if hasattr(island, "module") and not any(matches(island.module, n) for n in names):
            yield (("precision", "islands", i, "module"), f"island '{island.module}' matches no module of the architecture",
                   did_you_mean(island.module, names) or "norms are named layers.{i}.input_layernorm, layers.{i}.post_attention_layernorm and norm")


def _gates(spec: Spec) -> Iterator[Finding]:
    seen: set[tuple[str, str]] = set()
    for i, gate in enumerate(spec.gates):
        base: Path = ("gates", i)
        metric = CATALOGUE.get(gate.metric)
        if metric is None:
            yield (base + ("metric",), f"unknown metric '{gate.metric}'", did_you_mean(gate.metric, CATALOGUE) or "see the metric catalogue in docs/spec.md")
            continue
        if gate.op not in metric.ops:
            yield (base + ("op",), f"operator '{gate.op}' is not valid for {metric.kind} metric {gate.metric}", f"use one of {', '.join(metric.ops)}")
        lo, hi = metric.bounds
        if not lo <= gate.value <= hi:
            yield (base + ("value",), f"{gate.value} is outside [{lo}, {hi}], the range of {metric.kind} metric {gate.metric}",
                   "a rate is a fraction: write 0.9, not 90" if metric.kind == "rate" else "check the unit in docs/spec.md")
        if metric.kind == "count" and gate.value != int(gate.value):
            yield (base + ("value",), f"{gate.value} is not a whole number; {gate.metric} is a count", "write a whole number")
        if gate.min_n is not None and not metric.has_n:
            yield (base + ("min_n",), f"min_n does not apply to {gate.metric}, which is not measured over samples", "remove min_n")
        if (gate.metric, gate.op) in seen:
            yield (base,  f"gate {gate.metric} {gate.op} appears twice", "keep one threshold per metric and operator")
        if metric.producer == "speed":
            yield from rules_speed.speed_gate(spec, gate, base)
        seen.add((gate.metric, gate.op))


def _deployment(spec: Spec) -> Iterator[Finding]:
    derived = derive(spec)
    names: set[str] = set()
    for i, p in enumerate(spec.deployment.profiles):
        if p.chip is not None and p.chip not in CHIPS:
            yield (("deployment", "profiles", i, "chip"), f"unknown chip '{p.chip}'",
                   did_you_mean(p.chip, CHIPS) or f"known chips: {', '.join(CHIPS)}")
        if p.name in names:
            yield (("deployment", "profiles", i, "name"), f"profile '{p.name}' is listed twice", "give every profile its own name")
        names.add(p.name)
        need = derived.profile_bytes(p)
        have = p.memory_gb * (1 << 30)
        if need > have:
            yield (("deployment", "profiles", i, "memory_gb"),
                   f"needs {_size(need)} (weights {_size(derived.weight_bytes)} + {p.sessions} x {p.context} tokens x "
                   f"{derived.kv_bytes_per_token} B of KV cache) but memory_gb is {p.memory_gb:g} ({_size(have)})",
                   "quantize more, lower sessions or context, or drop the profile")


def _training_memory(spec: Spec) -> Iterator[Finding]:
    """The model state per rank must fit `memory_gb`: no kernel or recomputation can shrink it.
    Activations are an estimate that depends on the runtime's kernels: compile warns about them."""
    res = spec.training.resources
    if res.memory_gb is None:
        return
    have = res.memory_gb * (1 << 30)
    derived = derive(spec)
    world = res.nodes * res.nproc
    for job, by_len in derived.rank_memory.items():
        m = next(iter(by_len.values()))
        if m.state <= have:
            continue
        dims = derived.teacher_dims if job == "teacher" else derived.student_dims
        k = Kernels() if job == "teacher" else kernels(spec)
        need = min_fsdp2_ranks(dims, have, qat=job == "qat", kernels=k)
        unsharded = unsharded_bytes(dims, qat=job == "qat", kernels=k)
        if need is None:
            hint = (f"what no number of ranks shards ({_size(unsharded)}: two gathered fsdp2 units"
                    + (", QAT's fake-quantized weights" if m.qat_weights else "") + ") does not fit: use devices with more memory")
        elif res.strategy == "ddp" and need <= world:
            hint = f"use strategy: fsdp2, which shards it over the {world} ranks"
        else:
            hint = (f"fsdp2 needs at least {need} ranks: nodes: {math.ceil(need / res.nproc)} with nproc {res.nproc}"
                    + ("" if res.strategy == "fsdp2" else " and strategy: fsdp2"))
        what = f"weights, gradients and AdamW state of {dims.params:,} parameters"
        if m.qat_weights:
            what += f", and the fake-quantized copy of {dims.qat_params:,} that QAT keeps for the backward pass"
        yield (("training", "resources", "memory_gb"),
               f"the {job} job's model state is {_size(m.state)} per rank under {res.strategy} over {world} ranks "
               f"({what}) but memory_gb is {res.memory_gb:g}", hint)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def _paths(spec: Spec, spec_dir: str) -> Iterator[Finding]:
    src = spec.tokenizer.source
    candidates: list[tuple[Path, str, bool]] = [  # (key path, value, is a folder)
        (("data", "train"), spec.data.train, False),
        (("data", "eval"), spec.data.eval, False),
        (("tokenizer", "source", "corpus"), src.corpus, False) if isinstance(src, BpeSource) else (("tokenizer", "source", "path"), src.path, True),
    ]
    if isinstance(spec.teacher, HfLocalTeacher) and spec.drafts_for is None:
        # a drafter's teacher is its worker's release, which exists once the worker is published: the
        # teacher job names the command when it is missing (runtime/jobs/teacher.py)
        candidates.append((("teacher", "path"), spec.teacher.path, True))
    if spec.data.prompts is not None:
        candidates.append((("data", "prompts"), spec.data.prompts, False))
    if spec.data.tool_registry is not None:
        candidates.append((("data", "tool_registry"), spec.data.tool_registry, False))
    if spec.tokenizer.chat_template is not None:
        candidates.append((("tokenizer", "chat_template"), spec.tokenizer.chat_template, False))
    if spec.training.init is not None:
        candidates.append((("training", "init", "checkpoint"), spec.training.init.checkpoint, True))
    uris = [(p, v) for p, v, _ in candidates]
    if isinstance(spec.teacher, OpenAICompatibleTeacher) and spec.teacher.tokenizer is not None:
        uris.append((("teacher", "tokenizer"), spec.teacher.tokenizer))  # its local folder is checked by rules_teacher
    for path, value in uris:
        problem = uri_problem(value) if is_uri(value) else None
        if problem is not None:
            yield (path, f"'{shown(value)}': {problem[0]}", problem[1])
        elif is_uri(value) and path == ("tokenizer", "chat_template"):
            yield (path, f"'{shown(value)}': the chat template is compiled with the spec, from a local file",
                   "copy it next to the spec")
    for path, value, folder in candidates:
        if is_uri(value):
            continue
        full = os.path.join(spec_dir, value)
        if not value.strip():
            yield (path, "empty path", "write a path relative to the spec file, an absolute path or a URI")
        elif is_local_relative(value) and not os.path.exists(full):
            yield (path, f"'{value}' does not exist (relative to the spec file's folder)",
                   "relative paths are resolved against the spec's folder; absolute paths and URIs are checked by the job that reads them")
        elif is_local_relative(value) and os.path.isdir(full) != folder:
            yield (path, f"'{value}' is {'a file' if folder else 'a folder'}; expected {'a folder' if folder else 'a file'}", None)


RULES = [rules_judge.judge, rules_halt.halt, _architecture, _tokens, _shapes, _training, _quantization, _precision, _gates, _deployment, _training_memory, rules_teacher.prompts,
         rules_teacher.teacher, _paths, rules_teacher.shared_vocabulary]
