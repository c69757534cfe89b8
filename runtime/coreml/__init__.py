"""CoreML conversion of exported programs: precision islands, quantization, packaging, hashing.

Only the convert job imports this package (coremltools is heavy: import it in the worker once),
and every module here may import coremltools at the top.
"""

import logging as _logging

# coremltools logs at import that this torch is untested (documented in the README) and, on
# Linux, that its CoreML runtime proxies are missing (predictions need macOS; nothing here uses
# them). Quiet those import-time lines only; conversion warnings still show.
_log = _logging.getLogger("coremltools")
_level = _log.level
_log.setLevel(_logging.ERROR)
try:
    import coremltools  # noqa: E402,F401
finally:
    _log.setLevel(_level)
