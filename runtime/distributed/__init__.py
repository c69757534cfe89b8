"""Multi-process training: the process group (`world`), DDP / FSDP2 wrapping (`parallel`), the
torchrun launch from a job (`launch`) and the rank entry point it starts (`rank`).
See docs/training.md ("Processes, nodes and strategies")."""
