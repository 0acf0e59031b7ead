"""Annotation vendors: one interface (`export_batch`, `fetch_labels`, `status`), chosen by `export.vendor`."""

from labelloop.adapters.vendors.base import (
    ANNOTATION_COLUMNS,
    ExportBatch,
    ExportReceipt,
    FetchedLabels,
    Vendor,
    VendorError,
    VendorStatus,
    make_vendor,
)

__all__ = [
    "ANNOTATION_COLUMNS",
    "ExportBatch",
    "ExportReceipt",
    "FetchedLabels",
    "Vendor",
    "VendorError",
    "VendorStatus",
    "make_vendor",
]
