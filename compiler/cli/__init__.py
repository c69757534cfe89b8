"""The `modelspec` command line: `app.py` (shared), one module per command group, `main.py` (entry)."""
