"""Every MIL op the numpy reference interpreter implements: `OPS` maps an op type to its
implementation (`ops_math`, `ops_tensor`); `CONSTEXPR` are the compile-time ones.

`const`, `read_state` and `write_state` need the interpreter's weights and states and are
executed by `runtime.verify.interp`; they are not in `OPS`.
"""

from __future__ import annotations

from . import ops_math, ops_tensor  # noqa: F401  (they register their ops)
from .ops_base import FLOAT_DTYPES, NP_DTYPES, OPS, Args, OpError, cast_to

CONSTEXPR = frozenset(n for n in OPS if n.startswith("constexpr_"))
__all__ = ["CONSTEXPR", "FLOAT_DTYPES", "NP_DTYPES", "OPS", "Args", "OpError", "cast_to"]
