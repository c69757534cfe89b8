"""`training`: the KD stage, its losses and schedules, and quantization-aware training."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from .base import F, Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, SpecModel


class RampBody(SpecModel):
    start: NonNegFloat = F("Weight at step 0.")
    end: NonNegFloat = F("Weight from `steps` on.")
    steps: PosInt = F("Steps of the linear ramp.", unit="steps")


class Ramp(SpecModel):
    ramp: RampBody = F("Linear ramp from start to end over steps, then constant.")


class StepBody(SpecModel):
    before: NonNegFloat = F("Weight before at_step.")
    after: NonNegFloat = F("Weight from at_step on.")
    at_step: PosInt = F("Step where the weight switches.", unit="steps")


class StepChange(SpecModel):
    step: StepBody = F("A single switch of the weight at one step.")


def _schedule_tag(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "constant"
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    if isinstance(value, (Ramp, StepChange)):
        return "ramp" if isinstance(value, Ramp) else "step"
    return None


Weight = Annotated[
    Union[
        Annotated[NonNegFloat, Tag("constant")],
        Annotated[Ramp, Tag("ramp")],
        Annotated[StepChange, Tag("step")],
    ],
    Discriminator(
        _schedule_tag,
        custom_error_type="weight_schedule",
        custom_error_message="a weight is a number >= 0, {ramp: {start, end, steps}} or {step: {before, after, at_step}}",
    ),
]


class Loss(SpecModel):
    weight: Weight = F("Loss weight: a number >= 0 or a schedule ({ramp: ...} or {step: ...}).")


class KlLoss(Loss):
    temperature: PosFloat = F("Softmax temperature for teacher and student top-k distributions.")


class LengthKdLoss(Loss):
    hinge: NonNegFloat = F("Relative excess length over the teacher's that is free.", unit="fraction")
    slope: PosFloat = F("Penalty per unit of excess length beyond the hinge.")


class EarlyToolLoss(Loss):
    within_tokens: PosInt = F("A tool call should start within this many generated tokens.", unit="tokens")


class Losses(SpecModel):
    """Each term is optional; a term that is absent is not computed (weight 0 is the same, but explicit)."""

    kl: KlLoss | None = F("KL(teacher top-k || student) with temperature.", default=None)
    ce_teacher: Loss | None = F("Cross-entropy on the teacher's argmax tokens.", default=None)
    ce_ground_truth: Loss | None = F("Cross-entropy on the dataset's target tokens.", default=None)
    tool_name: Loss | None = F("Cross-entropy restricted to tool-name spans.", default=None)
    json_args: Loss | None = F("Cross-entropy restricted to JSON-argument spans.", default=None)
    integration: Loss | None = F("Cross-entropy restricted to tool-result integration spans.", default=None)
    length_kd: LengthKdLoss | None = F("Length-aware KD: hinge penalty on generating longer than the teacher.", default=None)
    early_tool: EarlyToolLoss | None = F("Rewards starting a needed tool call within within_tokens.", default=None)
    halt: Loss | None = F("The halt head (the spec's halt section): binary cross-entropy of its logit at each target "
                          "position against whether the next token ends the turn (eos or the tool-call end).",
                          default=None)
    pairwise: Loss | None = F("role judge: the pairwise objective (judge.objective) on the verdict score, over both "
                              "orders of every preference pair.", default=None)
    clauses: Loss | None = F("role judge: binary cross-entropy of each clause logit against the data's clause labels.",
                             default=None)
    verdict_kd: Loss | None = F("role judge: binary cross-entropy of the verdict score and clause logits against the "
                                "teacher's probabilities where a row gives them (KD from the teacher's verdicts).",
                                default=None)


class Optimizer(SpecModel):
    name: Literal["adamw"] = F("Optimizer.")
    lr: PosFloat = F("Peak learning rate.")
    betas: Annotated[list[Annotated[float, Field(gt=0, lt=1)]], Field(min_length=2, max_length=2)] = F("Adam betas [beta1, beta2].")
    weight_decay: NonNegFloat = F("Decoupled weight decay.")
    grad_clip: PosFloat = F("Global gradient-norm clip.")


class LrSchedule(SpecModel):
    warmup_steps: NonNegInt = F("Linear warmup steps; shorter than training.steps.", unit="steps")
    decay: Literal["cosine", "linear", "constant"] = F("Decay after warmup.")
    min_lr: NonNegFloat = F("Learning rate at the end of decay (<= optimizer.lr).")


class CurriculumStage(SpecModel):
    until_step: PosInt = F("Last step (exclusive) of this stage.", unit="steps")
    seq_len: PosInt = F("Training sequence length; one of shapes.prefill.", unit="tokens")


class GradBalance(SpecModel):
    max_ratio: Annotated[float, Field(gt=1, allow_inf_nan=False)] = F("Alert when one loss's gradient norm exceeds this multiple of the median of the others.")
    window: PosInt = F("Steps averaged before alerting.", unit="steps")


class QatOn(SpecModel):
    enabled: Literal[True] = F("Run quantization-aware training; export consumes its checkpoint.")
    start_fraction: Fraction = F("Fraction of training.steps after which QAT starts (0 < f < 1).", unit="fraction")
    lr_scale: Annotated[float, Field(gt=0, le=1)] = F("QAT learning rate as a fraction of the KD learning rate.", unit="fraction")


class QatOff(SpecModel):
    enabled: Literal[False] = F("No QAT: export consumes the KD checkpoint.")


class Init(SpecModel):
    checkpoint: str = F(
        "Start the student from a local transformers folder (config.json + *.safetensors; pickles, remote code and "
        "auto_map are refused). Relative paths are relative to the spec file. The train job checks every architecture "
        "field against config.json and hashes the weights into the job key and the package provenance.", unit="path")


class Resources(SpecModel):
    device: Literal["cpu", "cuda", "mps"] = F("Device type for training jobs (cpu ranks talk over gloo, cuda ranks over nccl).")
    nproc: PosInt = F("Processes per node (one per GPU on cuda); the global batch is micro_batch x grad_accum x nproc x nodes.", unit="processes")
    nodes: PosInt = F("Machines the training jobs span; above 1 the job is launched by torchrun on each node (docs/scale.md).", unit="nodes", default=1)
    strategy: Literal["ddp", "fsdp2"] = F("ddp: every rank holds the whole model; fsdp2: parameters, gradients and optimizer state are sharded across ranks (for a model that does not fit one device).", default="ddp")
    memory_gb: PosFloat | None = F("Memory of one device (one GPU on cuda) in GiB. When given, the compiler checks the per-rank model state (weights, gradients, optimizer) against it and reports whether activations fit too (docs/scale.md).", unit="GiB", default=None)


class Compute(SpecModel):
    """How the training jobs compute: precision, attention kernel, recomputation and the loss's chunking.

    Every setting computes the same loss terms (docs/scale.md measures what each costs and saves)."""

    precision: Literal["fp32", "bf16"] = F(
        "fp32: weights, activations and the loss in float32 (the CPU choice). bf16: matmuls and attention autocast to "
        "bfloat16 with float32 weights, gradients and AdamW state (fsdp2: layers gathered in bf16, gradients reduced in "
        "fp32); norms, RoPE and the loss stay float32.", default="fp32")
    attention: Literal["sdpa", "eager"] = F(
        "sdpa: torch.nn.functional.scaled_dot_product_attention (flash or memory-efficient kernels on cuda; no "
        "[batch, heads, seq, seq] scores kept). eager: explicit scores and softmax. Same causal and padding masks.",
        default="sdpa")
    activation_checkpointing: bool = F(
        "Recompute each decoder layer in the backward pass instead of keeping its activations (about a third more "
        "compute; activations kept drop to each layer's input).", default=False)
    loss_chunk: NonNegInt = F(
        "Positions per chunk of the loss: each chunk's logits are computed from the final hidden states, reduced to the "
        "few per-position values the loss terms read and freed (recomputed in the backward pass), so the "
        "[batch, seq, vocab] logits never exist whole. 0: all positions at once (the full logits kept for the backward).",
        unit="positions", default=1024)
    bucket_by_length: bool = F(
        "Group each optimizer step's rows into micro-batches of similar length (the step trains the same rows), so "
        "a micro-batch cropped to its longest row carries less padding; the train report states the padding fraction.",
        default=True)


class Training(SpecModel):
    seed: NonNegInt = F("Seed for every random number generator of training and data order.")
    init: Init | None = F("Where the student's weights start; absent: random (normal 0.02, seeded by seed).", default=None)
    steps: PosInt = F("Total optimizer steps, KD and QAT together.", unit="steps")
    micro_batch: PosInt = F("Sequences per process per forward pass.", unit="sequences")
    grad_accum: PosInt = F("Micro-batches accumulated per optimizer step.")
    optimizer: Optimizer = F("Optimizer.")
    lr_schedule: LrSchedule = F("Learning-rate schedule.")
    curriculum: Annotated[list[CurriculumStage], Field(min_length=1)] = F("Sequence-length curriculum; the last until_step equals steps.")
    checkpoint_every: PosInt = F("Steps between atomic checkpoints.", unit="steps")
    losses: Losses = F("Loss terms by name, with their weights.")
    grad_balance: GradBalance = F("Per-loss gradient-norm balance alert.")
    qat: Annotated[Union[QatOn, QatOff], Field(discriminator="enabled")] = F("Quantization-aware training.")
    resources: Resources = F("Where the training jobs run.")
    compute: Compute = F("Precision, attention kernel, activation checkpointing and loss chunking of the training jobs.",
                         default_factory=Compute)


def loss_used(term) -> bool:
    """A loss term that is configured and not constantly zero (a schedule counts as used)."""
    return term is not None and (not isinstance(term.weight, (int, float)) or term.weight > 0)
