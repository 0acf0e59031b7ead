"""A transient fault in the middle of a Label Studio export, against the real server: the answer to
the task import is lost after Label Studio did the import. labelloop's bounded retry reruns the whole
(idempotent) export, which finds the project and the tasks already there: nothing is created twice."""

from __future__ import annotations

import uuid

import pytest

from labelloop.adapters.vendors.labelstudio import LabelStudioVendor, project_title
from labelloop.core.retry import RetryPolicy
from tests.adapters.vendors.conftest import label_studio, make_batch  # noqa: F401  (the real server, once per session)
from tests.reliability.fault_servers import lossy_proxy

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


def test_lost_answer_to_a_task_import_is_retried_without_duplicating_anything(label_studio, tmp_path):  # noqa: F811
    batch_id = f"t{uuid.uuid4().hex[:10]}"
    batch, items = make_batch(batch_id, n=8)
    with lossy_proxy(label_studio.url, lambda method, path: method == "POST" and "/import" in path) as proxy:
        vendor = LabelStudioVendor(proxy.url, label_studio.token, tmp_path / "ls-state",
                                   retry=RetryPolicy(attempts=3, backoff_seconds=0.1))
        receipt = vendor.export_batch(batch)
        requests = list(proxy.requests)
    imports = [i for i, r in enumerate(requests) if r.startswith("POST") and "/import" in r]
    assert len(imports) == 1, "the retry imported the tasks a second time"
    assert any(r.startswith("GET /api/projects") for r in requests[imports[0] + 1:]), "no retry after the lost answer"
    assert receipt.n_items == 8
    client = label_studio.client()
    projects = [p for p in client.projects.list(title=project_title(batch_id)) if p.title == project_title(batch_id)]
    assert len(projects) == 1 and str(projects[0].id) == receipt.vendor_ref
    tasks = list(client.tasks.list(project=projects[0].id, fields="all"))
    assert sorted(t.data["item_id"] for t in tasks) == sorted(items["item_id"])  # 8 tasks, none twice
