"""The `modelspec` entry point: the compiler's commands plus `run`, `status`, `verify`,
`publish`, `launch` and `report`, through the compiler's single exit path."""

from __future__ import annotations

import sys

from compiler.cli.main import main as _compiler_main
from runtime.cli import run  # noqa: F401  (importing registers run, status)
from runtime.cli import gate  # noqa: F401  (registers verify, publish)
from runtime.cli import launch  # noqa: F401,I001  (registers launch)
from runtime.cli import hf  # noqa: F401,I001  (registers export-hf)
from runtime.cli import report  # noqa: F401,I001  (registers report)
from runtime.cli import speed  # noqa: F401,I001  (registers bench-device)


def main() -> None:
    _compiler_main()


if __name__ == "__main__":
    sys.exit(main())
