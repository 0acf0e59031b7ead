"""Annotation vendors: one interface (`export_batch`, `fetch_labels`, `status`, in base.py), chosen by
`export.vendor` from the VENDORS table, keyed by exactly the names of `VendorName` in labelloop/config.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from labelloop.adapters.vendors.base import (
    ANNOTATION_COLUMNS,
    ExportBatch,
    ExportReceipt,
    FetchedLabels,
    Vendor,
    VendorError,
    VendorStatus,
)
from labelloop.adapters.vendors.filedrop import FileDropVendor
from labelloop.adapters.vendors.labelstudio import LabelStudioVendor
from labelloop.adapters.vendors.simulated import SimulatedVendor
from labelloop.config import ExportParams, VendorName
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy
from labelloop.workspace import Workspace


def _simulated(params: ExportParams, workspace: Workspace, api_key: str | None, retry: RetryPolicy) -> Vendor:
    return SimulatedVendor(workspace.vendor_dir / "simulated", workspace.oracle_path, params.simulated)


def _filedrop(params: ExportParams, workspace: Workspace, api_key: str | None, retry: RetryPolicy) -> Vendor:
    return FileDropVendor(params.filedrop_url or str(workspace.filedrop_dir), retry=retry)


def _label_studio(params: ExportParams, workspace: Workspace, api_key: str | None, retry: RetryPolicy) -> Vendor:
    return LabelStudioVendor(params.label_studio_url, api_key or "", workspace.vendor_dir / "label-studio",
                             workspace.workspace_id, retry=retry)


# name → factory(export params, workspace, API key or None, retry policy) → a vendor configured for that workspace.
VENDORS: dict[VendorName, Callable[[ExportParams, Workspace, str | None, RetryPolicy], Vendor]] = {
    "simulated": _simulated,
    "filedrop": _filedrop,
    "label-studio": _label_studio,
}


def make_vendor(params: ExportParams, workspace_root: Path, api_key: str | None = None,
                retry: RetryPolicy = DEFAULT_RETRY) -> Vendor:
    """The vendor named by `export.vendor`, configured for one workspace.

    `api_key` is the Label Studio token (`labelloop.tasks.vendor` reads LABEL_STUDIO_API_KEY or a
    Prefect Secret block; Label Studio refuses to start without one); `retry` bounds the calls to an
    outside vendor (file drop, Label Studio).
    """
    if params.vendor not in VENDORS:
        raise ValueError(f"unknown vendor {params.vendor!r}; allowed: {', '.join(VENDORS)}")
    return VENDORS[params.vendor](params, Workspace.at(workspace_root), api_key, retry)


__all__ = [
    "ANNOTATION_COLUMNS",
    "VENDORS",
    "ExportBatch",
    "ExportReceipt",
    "FetchedLabels",
    "Vendor",
    "VendorError",
    "VendorStatus",
    "make_vendor",
]
