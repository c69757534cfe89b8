"""Failpoints: named places where a test can make this process die as if SIGKILLed.

`MODELSPEC_FAILPOINT=<point>:<job id>` kills the running `modelspec` process with SIGKILL when it
reaches that point for that job. Points (runtime/executor.py):
  - `before_record`: the job's outputs are written in staging, its completion record is not;
  - `before_index`: the completion record is written and renamed into place, the index is not
    updated;
  - `after_swap` (runtime/store.py): a forced rerun's outputs were swapped into place, the old
    copy still sits at the staging path, not yet quarantined.
Unset (always, outside the fault tests), a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "MODELSPEC_FAILPOINT"


def point(name: str, job_id: str) -> None:
    if os.environ.get(ENV) == f"{name}:{job_id}":
        os.kill(os.getpid(), signal.SIGKILL)
