"""Job builders: pure functions from the validated spec to concrete jobs with typed params.

One vocabulary of job kinds is used everywhere (plan, CLI, docs, runtime). `READS` says which
spec key paths each kind reads; it feeds `explain` and docs/spec.md, and the invalidation
tests check that params and READS agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compiler.analysis.catalogue import CATALOGUE
from compiler.analysis.derived import derive
from compiler.planning.interface import default_function, functions
from compiler.planning.params import (
    CPU_JOB, ArchitectureP, ComputeP, ConvertParams, DatasetParams, EvalParams, ExportParams, GateP, GatesParams, ProfileP,
    GenerateParams, HttpTeacherP, JudgeP, ModuleQuantP, PackageMetadataP, Params, ParityParams, PrecisionP, SpeculateParams, PublishParams, QatParams, ResourcesP, RopeScalingP, SpecialTokenP,
    TeacherParams, TokenizerParams, TrainingP, TrainParams, VerifyParams,
)
from compiler.analysis.resolve import precision_plan, quant_plan
from compiler.schema.architecture import Architecture
from compiler.schema.deploy import PackageMetadata
from compiler.schema.spec import Spec
from compiler.schema.teacher import OpenAICompatibleTeacher, TrainTeacher, UsdBudget
from compiler.schema.training import loss_used
from compiler.schema.tokenizer import BpeSource

KINDS = ("tokenizer", "dataset", "teacher", "generate", "train", "qat", "export", "convert",
         "verify", "parity", "eval", "speculate", "gates", "publish")

# Bump a kind's version when its runtime code changes what it produces: every cached
# output of that kind (and everything downstream) is then rebuilt.
# bumped when a kind's code changes its outputs: export/convert 2 = RoPE tables computed in fp32;
# 3 (and student-running kinds 2) = RoPE inverse frequencies as theta ** -e (exactly folded by coremltools)
# tokenizer 2: the saved folder loads with transformers 4.45+ and 5.x and adds bos (make_portable)
CODE_VERSIONS = {kind: 1 for kind in KINDS} | {"tokenizer": 2, "export": 3, "convert": 3, "train": 2, "qat": 2, "eval": 3,
                                               "parity": 3}

WHY = {
    "tokenizer": "Builds the transformers fast tokenizer with special tokens at exactly the spec's ids.",
    "dataset": "Validates samples against the tool registry, splits them and tokenizes them with span masks.",
    "teacher": "Provides the teacher and its top-k logits per sample for distillation.",
    "generate": "The teacher answers data.prompts (tool calls answered from fixtures); verified transcripts join the train split.",
    "train": "Distills the student from the teacher (the KD stage) with every loss term from the spec.",
    "qat": "Continues training with fake quantization per the resolved recipe; export consumes its checkpoint.",
    "export": "torch.export of one package function (a prefill shape, decode or verify), checked against contracts/io.json.",
    "convert": "Converts the exported programs to one CoreML ML program with the recipe, islands and metadata.",
    "verify": "Reads the package and checks it against the compiled contracts.",
    "parity": "Runs one function in a reference interpreter and compares it with torch.",
    "eval": "Greedy generation on the eval split with the torch student; quality metrics.",
    "speculate": "Greedy speculative decoding of the eval prompts with the worker (the drafter's teacher): acceptance rate, tokens per worker call.",
    "gates": "Evaluates the spec's gates against the measured metrics.",
    "publish": "The release once every hard gate passed: the package, its tokenizer, a runtime config for apps and a manifest hashing all of it.",
}

READS = {
    "tokenizer": ("tokenizer", "architecture.vocab_size"),
    "dataset": ("data", "role", "shapes.prefill", "tokenizer.special_tokens", "judge"),
    "teacher": ("teacher", "architecture.vocab_size", "architecture.norm", "architecture.rope", "architecture.max_context",
                "architecture.tie_embeddings", "training.seed"),
    "generate": ("data.prompts", "teacher", "shapes.prefill", "tokenizer.special_tokens", "training.seed"),
    "train": ("architecture", "training", "tokenizer.special_tokens", "judge", "halt"),
    "qat": ("architecture", "training", "tokenizer.special_tokens", "quantization.weights", "judge", "halt"),
    "export": ("architecture", "shapes", "quantization.kv_cache", "export.coreml.packaging", "export.coreml.decode_cache",
               "precision", "judge", "halt"),
    "convert": ("name", "version", "description", "architecture", "shapes", "quantization", "precision", "export.coreml",
                "tokenizer.special_tokens", "judge", "halt"),
    "verify": ("name", "architecture", "shapes", "quantization", "precision", "export.coreml.packaging",
               "export.coreml.decode_cache", "tokenizer.special_tokens", "gates", "judge", "halt"),
    "parity": ("architecture", "shapes", "quantization.kv_cache", "export.coreml.packaging", "export.coreml.decode_cache",
               "export.parity", "precision", "training.seed", "judge", "halt"),
    "eval": ("role", "architecture", "tokenizer.special_tokens", "judge", "halt"),
    "speculate": ("speculative", "architecture", "tokenizer.special_tokens", "halt"),
    "gates": ("gates", "name", "deployment.profiles", "export.coreml.compute_units"),  # speed reports: folder, binding
    "publish": ("name", "version", "role", "tokenizer.special_tokens", "judge", "architecture.vocab_size",
                "export.coreml.packaging", "halt"),
}



@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    needs: tuple[str, ...]
    params: Params
    outputs: dict[str, str] = field(default_factory=dict)
    resources: ResourcesP = CPU_JOB  # placement only: not fingerprinted


def training_resources(spec: Spec) -> ResourcesP:
    """Placement of the training jobs (teacher when it trains, train, qat) from training.resources."""
    r = spec.training.resources
    return ResourcesP(device=r.device, nodes=r.nodes, nproc=r.nproc, strategy=r.strategy,
                      cpus=r.nproc if r.device == "cpu" else max(1, r.nproc), gpus=r.nproc if r.device == "cuda" else 0)


def _one_device(spec: Spec) -> ResourcesP:
    """A single-process job on the training device (the teacher's top-k pass when it is not trained)."""
    r = spec.training.resources
    return ResourcesP(device=r.device, nodes=1, nproc=1, strategy="none", cpus=1, gpus=1 if r.device == "cuda" else 0)


def _eval_memory(spec: Spec) -> dict:
    """The eval job on the training device: bf16 on cuda when training is bf16, and its batches sized to the
    device's memory (training.resources.memory_gb) less the student's bf16/fp32 weights, with a tenth kept spare."""
    r, tr = spec.training.resources, spec.training
    out: dict = {}
    if r.device == "cuda" and tr.compute.precision == "bf16":
        out["dtype"] = "bf16"
    if r.memory_gb is not None:
        weights = derive(spec).params * (2 if out.get("dtype") == "bf16" else 4)
        out["memory_budget_mb"] = max(1, int((0.9 * r.memory_gb * (1 << 30) - weights) / (1 << 20)))
    return out


def rope_scaling_params(scaling) -> RopeScalingP | None:
    if scaling == "none":
        return None
    if scaling.kind == "linear":
        return RopeScalingP(rope_type="linear", factor=scaling.factor, low_freq_factor=None, high_freq_factor=None,
                            original_max_position_embeddings=None)
    return RopeScalingP(rope_type="llama3", factor=scaling.factor, low_freq_factor=scaling.low_freq_factor,
                        high_freq_factor=scaling.high_freq_factor,
                        original_max_position_embeddings=scaling.original_max_context)


def judge_params(spec: Spec) -> JudgeP | None:
    j = spec.judge
    return JudgeP(clauses=list(j.clauses), objective=j.objective, margin=j.margin) if j is not None else None


def halt_threshold(spec: Spec) -> float | None:
    """The halt head's stop probability, for the jobs that read the head (eval, speculate, publish)."""
    return spec.halt.threshold if spec.halt is not None else None


def judge_clauses(spec: Spec) -> list[str] | None:
    """What the dataset, eval and publish jobs read of a judge (the objective is the training jobs')."""
    return list(spec.judge.clauses) if spec.judge is not None else None


def student_architecture(spec: Spec) -> ArchitectureP:
    """The student's architecture parameters: the spec's, plus a judge's verdict head (1 score + one logit per clause)."""
    arch = architecture_params(spec.architecture)
    if spec.judge is not None:
        arch = arch.model_copy(update={"judge_outputs": 1 + len(spec.judge.clauses)})
    if spec.halt is not None:
        arch = arch.model_copy(update={"halt_head": True})
    return arch


def architecture_params(a: Architecture) -> ArchitectureP:
    return ArchitectureP(
        vocab_size=a.vocab_size, d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads,
        n_kv_heads=a.n_kv_heads, d_head=a.d_head, mlp_hidden=a.mlp.hidden, norm_eps=a.norm.eps,
        rope_theta=a.rope.theta, max_context=a.max_context, tie_embeddings=a.tie_embeddings,
        attention_bias=a.attention_bias, qk_norm=a.qk_norm, rope_scaling=rope_scaling_params(a.rope.scaling),
    )


def _special(spec: Spec) -> dict[str, SpecialTokenP]:
    return {k: SpecialTokenP(text=v.text, id=v.id) for k, v in sorted(spec.tokenizer.special_tokens.items())}


def _quant(spec: Spec) -> list[ModuleQuantP]:
    return [ModuleQuantP(module=q.module, kind=q.kind, shape=list(q.shape), dtype=q.dtype, granularity=q.granularity,
                         block_size=q.block_size) for q in quant_plan(spec)]


def size_budget_mb(spec: Spec) -> float | None:
    """The tightest upper bound the gates put on the package size, if any."""
    bounds = [g.value for g in spec.gates if g.metric == "package.size_mb" and g.op in ("<=", "<")]
    return min(bounds) if bounds else None


def _precision(spec: Spec) -> PrecisionP:
    plan = precision_plan(spec)
    modules = sorted({m for matched in plan.island_modules.values() for m in matched})
    return PrecisionP(compute=plan.compute, island_modules=modules, island_ops=plan.island_ops)


def global_batch(spec: Spec) -> int:
    """Sequences per optimizer step. What a training job computes depends on it, not on how many
    processes share it: the runtime derives grad_accum from the world size it is launched with."""
    tr = spec.training
    return tr.micro_batch * tr.grad_accum * tr.resources.nproc * tr.resources.nodes


def _training(spec: Spec) -> TrainingP:
    tr = spec.training
    return TrainingP(
        architecture=student_architecture(spec), seed=tr.seed, total_steps=tr.steps,
        micro_batch=tr.micro_batch, global_batch=global_batch(spec), optimizer=tr.optimizer.model_dump(),
        lr_schedule=tr.lr_schedule.model_dump(), curriculum=[c.model_dump() for c in tr.curriculum],
        checkpoint_every=tr.checkpoint_every, losses=tr.losses.model_dump(exclude_none=True),
        grad_balance=tr.grad_balance.model_dump(),
        special_token_ids={k: v.id for k, v in sorted(spec.tokenizer.special_tokens.items())},
        compute=ComputeP(**tr.compute.model_dump()), judge=judge_params(spec),
    )


def _teacher(spec: Spec) -> TeacherParams:
    t = spec.teacher
    if isinstance(t, TrainTeacher):
        student = spec.architecture
        # a trained teacher is a plain LlamaForCausalLM: the student's vocabulary, norm, RoPE and context, no biases or q/k norms
        arch = student.model_copy(update=t.architecture.model_dump() | {"mlp": t.architecture.mlp, "attention_bias": False,
                                                                        "qk_norm": False})
        return TeacherParams(kind="train", path=None, architecture=architecture_params(arch), steps=t.steps,
                             micro_batch=t.micro_batch, seq_len=t.seq_len, lr=t.lr, seed=spec.training.seed, top_k=t.top_k)
    return TeacherParams(kind="hf_local", path=t.path, architecture=None, steps=None, micro_batch=None, seq_len=None,
                         lr=None, seed=spec.training.seed, top_k=t.top_k)


def speed_reports_folder(spec: Spec) -> str:
    """Where the spec's speed reports live, relative to the spec file: `speed/<name>` (docs/speed.md).
    A convention, not a spec field: adding a report must not change the spec, or the package it measured."""
    return f"speed/{spec.name}"


def parity_lengths(spec) -> list[int]:
    """The prefill lengths the parity jobs run (export.parity.lengths resolved against shapes.prefill)."""
    lengths = spec.export.parity.lengths
    prefill = list(spec.shapes.prefill)
    if lengths == "all":
        return prefill
    if lengths == "smallest":
        return [min(prefill)]
    return [n for n in prefill if n in lengths]


def _package_metadata(spec: Spec) -> PackageMetadataP:
    meta = spec.export.coreml.metadata or PackageMetadata()
    return PackageMetadataP(author=meta.author, license=meta.license, version=spec.version, description=spec.description)


def _http(t: OpenAICompatibleTeacher) -> HttpTeacherP:
    usd = isinstance(t.budget, UsdBudget)
    return HttpTeacherP(
        base_url=t.base_url, model=t.model, api_key_env=t.api_key_env, token_ids=t.token_ids, tokenizer=t.tokenizer,
        top_p=t.generation.top_p, sampling_seed=t.generation.seed, in_flight=t.limits.in_flight,
        requests_per_minute=t.limits.requests_per_minute, tokens_per_minute=t.limits.tokens_per_minute,
        retries=t.retries, timeout_s=t.timeout_s, max_usd=t.budget.max_usd if usd else None,
        usd_per_million_input=t.budget.usd_per_million_input if usd else 0.0,
        usd_per_million_output=t.budget.usd_per_million_output if usd else 0.0,
        max_tokens_budget=None if usd else t.budget.max_tokens)


def _generate_job(spec: Spec, special: dict[str, SpecialTokenP], needs: tuple[str, ...]) -> Job:
    t = spec.teacher
    gen = t.generation
    http = isinstance(t, OpenAICompatibleTeacher)
    return Job("generate", "generate", needs, GenerateParams(
        teacher_kind=t.kind, prompts=spec.data.prompts, max_tokens=gen.max_tokens, temperature=gen.temperature,
        tool_rounds=t.tool_rounds if http else gen.tool_rounds, batch=t.limits.in_flight if http else gen.batch,
        max_failure_rate=t.max_failure_rate if http else gen.max_failure_rate, seed=spec.training.seed, top_k=t.top_k,
        max_seq_len=max(spec.shapes.prefill), special_tokens=special, http=_http(t) if http else None,
        logit_kd=http and loss_used(spec.training.losses.kl),
    ), {"transcripts": "transcripts.jsonl", "data": "data", "report": "report.json"}
        | ({"logprobs": "logprobs"} if http and t.top_k > 0 else {})
        | ({"targets": "targets"} if not http or loss_used(spec.training.losses.kl) else {}),
        CPU_JOB if http else _one_device(spec))


def build_jobs(spec: Spec) -> list[Job]:
    src = spec.tokenizer.source
    special = _special(spec)
    arch = student_architecture(spec)
    tr = spec.training
    fns = functions(spec)
    cache_len = spec.shapes.decode.cache_len if spec.shapes.decode.enabled else None
    decode_cache = spec.export.coreml.decode_cache if spec.shapes.decode.enabled else None
    quant = _quant(spec)
    precision = _precision(spec)
    kd_end = math.floor(tr.steps * tr.qat.start_fraction) if tr.qat.enabled else tr.steps

    jobs = [
        Job("tokenizer", "tokenizer", (), TokenizerParams(
            source_kind=src.kind, source_path=src.corpus if isinstance(src, BpeSource) else src.path,
            trained_vocab_size=src.vocab_size if isinstance(src, BpeSource) else None,
            model_vocab_size=spec.architecture.vocab_size, special_tokens=special, chat_template=spec.tokenizer.chat_template,
        ), {"tokenizer": "tokenizer", "report": "report.json"}),
        Job("dataset", "dataset", ("tokenizer",), DatasetParams(
            train=spec.data.train, eval=spec.data.eval, tool_registry=spec.data.tool_registry, role=spec.role,
            max_seq_len=max(spec.shapes.prefill), special_tokens=special, judge_clauses=judge_clauses(spec),
        ), {"data": "data", "report": "report.json"}),
    ]
    # the teacher: a local model (its job trains or loads it and writes top-k targets), and the generate job
    # when there are prompts; an HTTP teacher is only the generate job (it talks to the endpoint)
    # a judge has no teacher job: its KD reads the teacher verdicts in its data rows (docs/roles.md#judge)
    http = isinstance(spec.teacher, OpenAICompatibleTeacher)
    teacher: tuple[str, ...] = () if http or spec.teacher is None else ("teacher",)
    generated: tuple[str, ...] = ("generate",) if http or spec.data.prompts is not None else ()
    if teacher:
        jobs.append(Job("teacher", "teacher", ("tokenizer", "dataset"), _teacher(spec),
                        {"model": "model", "targets": "targets", "report": "report.json"},
                        training_resources(spec) if isinstance(spec.teacher, TrainTeacher) else _one_device(spec)))
    if generated:
        jobs.append(_generate_job(spec, special, ("tokenizer", *teacher)))
    jobs.append(Job("train", "train", ("dataset", *teacher, *generated), TrainParams(
        training=_training(spec), start_step=0, end_step=kd_end, init_checkpoint=tr.init.checkpoint if tr.init else None),
        {"checkpoint": "checkpoint", "metrics": "metrics.jsonl", "tensorboard": "tensorboard", "report": "report.json"},
        training_resources(spec)))
    student = "train"
    if tr.qat.enabled:
        jobs.append(Job("qat", "qat", ("train", "dataset", *teacher, *generated), QatParams(
            training=_training(spec), start_step=kd_end, end_step=tr.steps, lr_scale=tr.qat.lr_scale, quantization=quant,
        ), {"checkpoint": "checkpoint", "metrics": "metrics.jsonl", "tensorboard": "tensorboard", "report": "report.json"},
            training_resources(spec)))
        student = "qat"
    export_ids = []
    for fn in fns:
        job_id = f"export-{fn.name.replace('_', '-')}"
        export_ids.append(job_id)
        jobs.append(Job(job_id, "export", (student,), ExportParams(
            architecture=arch, function=fn, cache_len=cache_len, decode_cache=decode_cache, compute=spec.precision.compute,
        ), {"program": "program.pt2", "report": "report.json"}))
    cm = spec.export.coreml
    jobs.append(Job("convert", "convert", tuple(export_ids) + ("tokenizer",), ConvertParams(
        name=spec.name, target=cm.target, compute_units=cm.compute_units, packaging=cm.packaging,
        default_function=default_function(spec), functions=fns, quantization=quant, precision=precision, special_tokens=special,
        metadata=_package_metadata(spec),
    ), {"package": f"{spec.name}.mlpackage", "report": "report.json"}))
    jobs.append(Job("verify", "verify", ("convert", "tokenizer"), VerifyParams(
        name=spec.name, functions=fns, default_function=default_function(spec), quantization=quant, precision=precision,
        special_tokens=special, quantization_sources={q.module: q.source for q in quant_plan(spec)},
        size_budget_mb=size_budget_mb(spec),
    ), {"report": "report.json"}))
    parity_ids = []
    run = spec.export.parity
    lengths = parity_lengths(spec)
    for fn in fns:
        if fn.role == "prefill" and not set(fn.seq_lens) & set(lengths):
            continue  # a length the spec does not run in the interpreter (export.parity.lengths): verify checks it
        job_id = f"parity-{fn.name.replace('_', '-')}"
        parity_ids.append(job_id)
        jobs.append(Job(job_id, "parity", ("convert", student), ParityParams(
            architecture=arch, function=fn, cache_len=cache_len, samples=run.samples, decode_steps=run.decode_steps,
            seed=tr.seed, lengths=[n for n in fn.seq_lens if n in lengths] if fn.role == "prefill" else [],
            positions=None if run.positions == "all" else run.positions,
        ), {"golden": "golden.npz", "report": "report.json"}))
    jobs.append(Job("eval", "eval", (student, "dataset", "tokenizer"), EvalParams(
        architecture=arch, role=spec.role, max_total_tokens=spec.architecture.max_context, special_tokens=special,
        judge_clauses=judge_clauses(spec), halt_threshold=halt_threshold(spec), **_eval_memory(spec),
    ), {"report": "report.json", "samples": "samples.jsonl"}, _one_device(spec)))
    if spec.speculative is not None:  # a drafter against its worker (compiler/reading/pairing.py checks the pair)
        sp = spec.speculative
        jobs.append(Job("speculate", "speculate", (student, "teacher", "dataset"), SpeculateParams(
            architecture=arch, k=sp.k, max_new_tokens=sp.max_new_tokens, prompts=sp.prompts,
            max_total_tokens=spec.architecture.max_context, special_tokens=special,
            halt_threshold=halt_threshold(spec),
        ), {"report": "report.json"}))
        generated = (*generated, "speculate")
    gates = [GateP(metric=g.metric, op=g.op, value=g.value, policy=g.policy, min_n=g.min_n,
                   kind=CATALOGUE[g.metric].kind, producer=CATALOGUE[g.metric].producer) for g in spec.gates]
    speed = any(g.producer == "speed" for g in gates)
    jobs.append(Job("gates", "gates", ("convert", "verify", *parity_ids, "eval", *generated), GatesParams(
        gates=gates, speed_reports=speed_reports_folder(spec) if speed else "",
        profiles=sorted((ProfileP(name=p.name, chip=p.chip) for p in spec.deployment.profiles),
                        key=lambda p: p.name) if speed else [],
        compute_units=spec.export.coreml.compute_units if speed else "",
    ), {"report": "report.json"}))
    # the tokenizer ships with the release; parity jobs for their golden vectors; the student's
    # checkpoint for the release's hf/ folder (a released worker is a valid teacher for its drafter)
    jobs.append(Job("publish", "publish", ("gates", "convert", "verify", *parity_ids, "tokenizer", student), PublishParams(
        name=spec.name, version=spec.version, role=spec.role, special_tokens=special,
        vocab_size=spec.architecture.vocab_size if cm.packaging == "enumerated" else None, judge_clauses=judge_clauses(spec),
        halt_threshold=halt_threshold(spec),
    ), {"manifest": "manifest.json", "app": "app", "hf": "hf"}))
    return jobs
