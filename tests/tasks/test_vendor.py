"""Vendor credentials: the environment first, else a Prefect Secret block (real Prefect API)."""

from __future__ import annotations

import pytest

from labelloop.adapters.vendors.labelstudio import TOKEN_ENV, LabelStudioVendor
from labelloop.config import ExportParams
from labelloop.tasks.vendor import SECRET_BLOCKS, secret, workspace_vendor

pytestmark = pytest.mark.slow  # needs the session's Prefect API


@pytest.fixture
def secret_block(prefect_api):
    """The block, deleted afterwards so no other test of the session picks it up."""
    from prefect.blocks.system import Secret

    name = SECRET_BLOCKS[TOKEN_ENV]
    yield lambda value: Secret(value=value).save(name, overwrite=True)
    from prefect.exceptions import ObjectNotFound

    try:
        Secret.delete(name)
    except (ValueError, ObjectNotFound):
        pass  # never saved


def test_the_token_comes_from_the_environment_else_from_a_prefect_secret_block(secret_block, workspace, monkeypatch):

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    params = ExportParams(vendor="label-studio")
    assert secret(TOKEN_ENV) is None  # no block yet: the vendor then names the variable to set
    secret_block("block-token-123")
    vendor = workspace_vendor(workspace, params)
    assert isinstance(vendor, LabelStudioVendor) and vendor._api_key == "block-token-123"
    assert "block-token-123" not in repr(vendor)

    monkeypatch.setenv(TOKEN_ENV, "env-token-456")  # the environment wins over the block
    assert workspace_vendor(workspace, params)._api_key == "env-token-456"
    assert workspace_vendor(workspace, ExportParams(vendor="simulated")).name == "simulated"  # no secret looked up
