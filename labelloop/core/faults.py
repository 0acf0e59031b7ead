"""Named crash points for the crash-and-rerun tests.

`crash_point("dataset.after_commit")` kills the process with SIGKILL — no cleanup, no exception
handlers, exactly like a worker killed by the OS — when `LABELLOOP_CRASH_AT` names that point.
Unset (always, outside those tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "LABELLOOP_CRASH_AT"

# Every point, in the order a cycle passes them (docs/reliability.md lists the same).
CRASH_POINTS = (
    "production.after_part",        # log part written, traffic cursor not moved
    "capture.after_pool",           # pool written, watermark not moved
    "select.after_batch",           # batch written, its items still in the pool
    "export.after_vendor",          # vendor has the tasks, batch not marked exported
    "import.after_raw",             # raw payload archived, nothing validated
    "import.after_final",           # final labels written, batch status not updated
    "dataset.after_write",          # labelled set written, not `dvc add`-ed
    "dataset.after_commit",         # committed, not tagged
    "dataset.after_tag",            # tagged, not pushed, batches not marked
    "train.after_register",         # version registered, alias `challenger` not set
    "gate.after_record",            # decision on the run, alias not moved
    "gate.after_previous",          # previous-champion moved, champion not yet
    "gate.after_champion",          # champion moved, its champion-history record not written
)


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
