"""The training half of the runtime: KD (`train` job) and quantization-aware training (`qat` job).

`loop.Trainer` is shared by both jobs; `losses` holds every loss term of `training.losses`,
`schedules` the learning-rate, loss-weight and curriculum schedules, `data` the batches,
`checkpoints` the resumable checkpoints and `metrics` the JSONL/TensorBoard logs and the
per-loss gradient-norm balance alert. See docs/training.md.
"""
