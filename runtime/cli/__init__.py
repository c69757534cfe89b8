"""The runtime's commands on the compiler's typer app: `common.py` (shared), `run.py`, `gate.py`, `launch.py`; `main.py` is the entry point."""
