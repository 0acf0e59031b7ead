from prefect import task

from labelloop.stages import dataset
from labelloop.tasks.environment import open_workspace, retry_policy


@task(name="version-dataset", retries=2, retry_delay_seconds=[5, 30])
def update_dataset(workspace: str) -> dataset.DatasetVersion:
    """Append imported batches, `dvc add`, commit, tag `data-vN`, push (a retry completes the same version)."""
    return dataset.update_dataset(open_workspace(workspace), retry=retry_policy())
