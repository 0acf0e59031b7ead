"""The workspace's vendor, with its credentials from the environment or a Prefect Secret block and
the process's retry policy (`labelloop.tasks.environment`)."""

from __future__ import annotations

import os
from typing import cast

from labelloop.adapters.vendors import Vendor, make_vendor
from labelloop.adapters.vendors.labelstudio import TOKEN_ENV
from labelloop.config import ExportParams
from labelloop.tasks.environment import retry_policy
from labelloop.workspace import Workspace

# Prefect Secret block read when the environment variable is not set (`prefect block create secret`,
# or `Secret(value=...).save("label-studio-api-key")`); params.yaml never holds a token.
SECRET_BLOCKS = {TOKEN_ENV: "label-studio-api-key"}


def secret(env_name: str) -> str | None:
    """The environment's value, else the Prefect Secret block's, else None."""
    value = os.environ.get(env_name)
    if value:
        return value
    from prefect.blocks.system import Secret

    try:
        block = cast(Secret, Secret.load(SECRET_BLOCKS[env_name]))  # sync context: the block, not a coroutine
        return str(block.get())
    except ValueError:  # Prefect raises ValueError for a block that does not exist
        return None


def workspace_vendor(ws: Workspace, params: ExportParams) -> Vendor:
    api_key = secret(TOKEN_ENV) if params.vendor == "label-studio" else None
    return make_vendor(params, ws.root, api_key=api_key, retry=retry_policy())
