"""Shared by the compiler's CLI tests: run `modelspec` in-process through its console entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def run(monkeypatch, capsys):
    """run(*args, cwd=REPO) -> (exit status, stdout, stderr), every command registered."""
    from compiler.cli import app as cli_app
    from compiler.cli.main import main as cli_main
    # importing compiler.cli.main registers every command (diff, fmt, new, ci)

    def run_(*args: str, cwd: Path = REPO) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["modelspec", *args])
        monkeypatch.setattr(cli_app, "_debug", False)
        with pytest.raises(SystemExit) as exc:
            cli_main()
        out, err = capsys.readouterr()
        return (0 if exc.value.code is None else exc.value.code), out, err

    return run_
