import pandas as pd
import pytest

from labelloop.core.io import atomic_path, read_json, write_json, write_parquet


def test_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_parquet_write_replaces_whole_file(tmp_path):
    target = tmp_path / "x.parquet"
    write_parquet(target, pd.DataFrame({"a": [1, 2, 3]}))
    write_parquet(target, pd.DataFrame({"a": [9]}))
    assert pd.read_parquet(target)["a"].tolist() == [9]


def test_read_json_default_when_missing(tmp_path):
    assert read_json(tmp_path / "nope.json", {"parts": []}) == {"parts": []}
