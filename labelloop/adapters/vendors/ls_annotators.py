"""Simulated annotators working in a real Label Studio server (the demo's annotation team).

Nobody labels on this machine, so `labelloop demo --vendor label-studio` needs stand-ins for the people.
Each simulated annotator is a Label Studio user who submits annotations through the API, as the
labelling UI does on a click; the answer is drawn exactly as the simulated vendor draws it (the demo's
oracle plus that annotator's error rate and noise model, deterministic per batch, item and annotator).
Everything else is the real server: projects, tasks, predictions, overlap, and the JSON export that the
import stage reads. Only the human is simulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import pandas as pd

from labelloop.adapters.vendors.base import VendorError
from labelloop.adapters.vendors.labelstudio import FROM_NAME, TO_NAME, project_title
from labelloop.adapters.vendors.simulated import (
    _pick_annotators as pick_annotators,  # the same assignment as the simulated vendor
)
from labelloop.adapters.vendors.simulated import simulate_answer
from labelloop.config import SimulatedVendorParams

EMAIL_DOMAIN = "annotators.labelloop.local"


@dataclass(frozen=True)
class AnnotationRound:
    """What one pass of the team did."""

    projects: int
    answers: int
    skipped_unknown: int  # tasks whose item the oracle cannot answer (left open, as a person would skip)


def label_set_of(label_config: str) -> list[str]:
    """The choices of the labelling config's question (the vendor generates it from the label set)."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise VendorError(f"project label config is not XML: {error}") from error
    for choices in root.iter("Choices"):
        if choices.get("name") == FROM_NAME:
            return [c.get("value", "") for c in choices.iter("Choice")]
    raise VendorError(f"project label config has no <Choices name='{FROM_NAME}'>")


class LabelStudioAnnotators:
    """`params.annotators` simulated people, each a Label Studio user `annotator-<k>@annotators.labelloop.local`."""

    def __init__(self, client: Any, oracle: pd.Series, params: SimulatedVendorParams, namespace: str | None = None) -> None:
        self.client = client
        self.project_prefix = project_title("", namespace)  # only this workspace's projects
        self.oracle = oracle.astype(str)
        self.oracle.index = self.oracle.index.astype(str)
        self.params = params
        self._user_ids: dict[int, int] | None = None

    def user_ids(self) -> dict[int, int]:
        """annotator index -> Label Studio user id; users are created once and reused."""
        if self._user_ids is None:
            known = {str(u.email): int(u.id) for u in self.client.users.list()}
            ids = {}
            for k in range(self.params.annotators):
                email = f"annotator-{k}@{EMAIL_DOMAIN}"
                if email not in known:
                    known[email] = int(self.client.users.create(email=email, username=f"annotator-{k}",
                                                                first_name=f"Annotator {k}").id)
                ids[k] = known[email]
            self._user_ids = ids
        return self._user_ids

    def work(self) -> AnnotationRound:
        """Answer every open task of every labelloop project: each task gets its `annotators_wanted`
        answers from the annotators the simulated vendor would assign; an annotator who already
        answered a task is not asked again, so running this twice adds nothing."""
        users = self.user_ids()
        answers = skipped = n_projects = 0
        for project in self.client.projects.list():
            if not str(project.title or "").startswith(self.project_prefix):
                continue
            n_projects += 1
            label_set = label_set_of(self.client.projects.get(id=project.id).label_config)
            for task in self.client.tasks.list(project=project.id, fields="all"):
                data = task.data or {}
                item_id, batch_id = str(data.get("item_id")), str(data.get("batch_id"))
                if item_id not in self.oracle.index:
                    skipped += 1
                    continue
                done = {int(a["completed_by"]) for a in task.annotations or [] if a.get("completed_by") is not None}
                wanted = max(int(data.get("annotators_wanted") or 1), 1)
                for annotator in pick_annotators(self.params, batch_id, item_id, wanted):
                    if users[annotator] in done:
                        continue
                    label = simulate_answer(self.params, label_set, batch_id, item_id, annotator, self.oracle[item_id])
                    self.client.annotations.create(
                        id=int(task.id), completed_by=users[annotator],
                        result=[{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}],
                    )
                    answers += 1
        return AnnotationRound(n_projects, answers, skipped)
