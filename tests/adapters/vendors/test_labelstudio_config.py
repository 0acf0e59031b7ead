"""What Label Studio annotators see, built without a server: the labelling config and the task payloads.

The same config and payloads are accepted by a real server in test_labelstudio.py.
"""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from labelloop.adapters.vendors.labelstudio import (
    MISSING,
    TABLE_PAIRS,
    TABLE_ROWS,
    TO_NAME,
    LabelStudioVendor,
    label_config,
    table_rows,
)
from labelloop.adapters.vendors.ls_annotators import label_set_of

from .conftest import LABELS, make_mixed_batch


def read_table(rows: list[dict]) -> list[tuple[str, object]]:
    """The (column, value) pairs of `table_rows` in reading order: down each pair of columns, then right."""
    keys = list(rows[0])
    pairs = [(keys[i], keys[i + 1]) for i in range(0, len(keys), 2)]
    return [(row[c], row[v]) for c, v in pairs for row in rows if row[c] != ""]


@pytest.fixture
def vendor(tmp_path):
    return LabelStudioVendor("http://127.0.0.1:1", "token", tmp_path / "state")  # no call reaches a server here


def test_config_has_a_text_block_per_text_column_and_one_table(vendor):
    batch = make_mixed_batch("b1")
    assert batch.text_columns == ["body", "subject"] and batch.table_columns == ["ticket_id", "amount", "country", "x_10"]
    root = ElementTree.fromstring(label_config(batch.label_set, batch.text_columns, table=bool(batch.table_columns)))
    shown = [(child.tag, child.get("name"), child.get("value")) for child in root]
    assert shown[1] == ("Text", TO_NAME, "$item_id")
    assert "$priority" in shown[0][2] and "acquisition score" not in json.dumps(shown)
    assert shown[2:6] == [("Header", None, "body"), ("Text", "text_0", "$text_0"),
                          ("Header", None, "subject"), ("Text", "text_1", "$text_1")]
    assert [s for s in shown if s[0] == "Table"] == [("Table", "columns", "$table")]
    assert root.find("Choices").get("toName") == TO_NAME and label_set_of(ElementTree.tostring(root, "unicode")) == LABELS
    # Only text: no table; only numbers: no text block beyond the item id.
    assert ElementTree.fromstring(label_config(LABELS, ["body"], table=False)).find("Table") is None
    assert [t.get("name") for t in ElementTree.fromstring(label_config(LABELS)).iter("Text")] == [TO_NAME]


def test_a_dollar_in_a_column_name_is_not_a_label_studio_variable():
    root = ElementTree.fromstring(label_config(LABELS, ["price $ note", 'say "hi" & <b>']))
    headers = [h.get("value") for h in root.iter("Header")][1:]
    assert headers == ["price \uff04 note", 'say "hi" & <b>']


def test_task_data_shows_the_real_item(vendor):
    batch = make_mixed_batch("b1")
    payloads = vendor.task_payloads(batch)
    first, second, third = (p["data"] for p in payloads)
    assert first["text_0"] == batch.items["body"].iloc[0] and first["text_1"] == "refund"
    assert second["text_0"] == MISSING  # a missing text is said to be missing
    assert read_table(first["table"]) == [("ticket_id", "T-001"), ("amount", 12.5), ("country", "DE"), ("x_10", 1.0)]
    assert read_table(second["table"]) == [("ticket_id", "T-002"), ("amount", MISSING), ("country", MISSING), ("x_10", 2.0)]
    # The utility is a number the Data Manager sorts; the priority ranks it (1 = the highest utility).
    assert [type(d["utility"]) for d in (first, second, third)] == [float] * 3
    assert [d["priority"] for d in (first, second, third)] == [2, 1, 3] and first["n_items"] == 3
    prediction = payloads[0]["predictions"][0]
    assert prediction["model_version"] == "12" and prediction["score"] == 0.55
    assert prediction["result"][0]["value"]["choices"] == ["cat"] and prediction["result"][0]["to_name"] == TO_NAME
    assert "predictions" not in payloads[2]  # no guess (a gold question): no pre-annotation
    assert vendor.batch_model_version(payloads) == "12"
    json.dumps(payloads, allow_nan=False)  # plain JSON: no NaN anywhere


@pytest.mark.parametrize("n, pairs, rows", [(1, 1, 1), (5, 1, 5), (10, 1, 10), (19, 2, 10), (36, 4, 9), (40, 4, 10),
                                            (100, TABLE_PAIRS, 25)])
def test_table_keeps_the_column_order_on_one_page(n, pairs, rows):
    names = [f"x_{i}" for i in range(1, n + 1)]  # sorted as text these would read x_1, x_10, x_100, x_11 ...
    table = table_rows({name: float(i) for i, name in enumerate(names)})
    assert len(table) == rows and len(table[0]) == 2 * pairs
    assert all(list(row) == list(table[0]) for row in table)  # every row has the same keys, distinct per pair
    assert read_table(table) == [(name, float(i)) for i, name in enumerate(names)]
    assert (len(table) <= TABLE_ROWS) == (n <= TABLE_ROWS * TABLE_PAIRS)  # one page up to 40 columns


def test_table_headers_read_column_and_value():
    keys = list(table_rows({f"c{i}": i for i in range(25)})[0])
    assert [k.replace("\u200b", "") for k in keys] == ["column", "value"] * 3 and len(set(keys)) == 6
    assert table_rows({}) == []
