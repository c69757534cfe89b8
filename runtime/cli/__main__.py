"""`python -m runtime.cli ...` (torchrun's `-m runtime.cli launch` and the tests)."""

import sys

from runtime.cli.main import main

sys.exit(main())
