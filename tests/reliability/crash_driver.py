"""Runs one cycle's stages in order, through the Prefect tasks' own functions (`.fn`), in a process
that a test kills with SIGKILL at a named crash point (LABELLOOP_CRASH_AT). No Prefect engine is
needed for that: durable state is written by the same `labelloop` calls the flow makes.

    python -m tests.reliability.crash_driver WORKSPACE
"""

from __future__ import annotations

import sys

from labelloop import tracking
from labelloop.workspace import Workspace


def run_cycle_stages(root: str) -> None:
    from tasks.capture import capture_predictions
    from tasks.dataset import update_dataset
    from tasks.export import export_batches
    from tasks.gate import decide, promote, record
    from tasks.importing import import_labels
    from tasks.production import serve_traffic
    from tasks.select import select_batch
    from tasks.train import train_challenger

    ws = Workspace.at(root)
    p = ws.params()
    tracking.resume_gate(ws, p.train.model_name)  # as the cycle flow does first
    serve_traffic.fn(root, p.production, p.train.model_name)
    capture_predictions.fn(root, p.capture)
    select_batch.fn(root, p.select, p.train)
    export_batches.fn(root, p.export)
    import_labels.fn(root, p.import_, p.export)
    version = update_dataset.fn(root)
    if version.created or tracking.needs_retrain(ws, p.train, version.tag):
        train_challenger.fn(root, p.train)
        decision = decide.fn(root, p.train.model_name, p.gate)
        if decision.challenger_version != decision.champion_version:
            record.fn(root, p.train.model_name, decision)
            if decision.promote:
                promote.fn(root, p.train.model_name, decision)


if __name__ == "__main__":
    run_cycle_stages(sys.argv[1])
