"""The vendor table: one entry per name `export.vendor` accepts, each building its vendor."""

from __future__ import annotations

from typing import get_args

import pytest

from labelloop.adapters.vendors import VENDORS, make_vendor
from labelloop.adapters.vendors.filedrop import FileDropVendor
from labelloop.adapters.vendors.simulated import SimulatedVendor
from labelloop.config import ExportParams, VendorName


def test_table_is_keyed_by_the_config_choice_type():
    assert set(VENDORS) == set(get_args(VendorName))


@pytest.mark.parametrize("name, kind", [("simulated", SimulatedVendor), ("filedrop", FileDropVendor)])
def test_make_vendor_builds_the_named_vendor(tmp_path, name, kind):
    assert isinstance(make_vendor(ExportParams(vendor=name), tmp_path), kind)


def test_unknown_vendor_names_the_allowed_ones(tmp_path):
    params = ExportParams.model_construct(vendor="mturk")  # bypasses validation, as a hand-built object could
    with pytest.raises(ValueError, match="allowed: simulated, filedrop, label-studio"):
        make_vendor(params, tmp_path)
