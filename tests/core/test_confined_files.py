"""labelloop.core.confined_files: no link followed on the way or at the end, reads bounded on the opened file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelloop.core.confined_files import FileTooLarge, UnsafeFile, lexists, read_regular, write_regular


def test_a_file_whose_size_lies_is_read_only_up_to_the_limit():
    # /proc files say 0 bytes and hold more: the read itself must stop at limit + 1 bytes.
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc on this system")
    with pytest.raises(FileTooLarge, match="grew above the 10-byte limit") as caught:
        read_regular("/proc/self", ["status"], limit=10)
    assert caught.value.grew and caught.value.size == 11
    assert len(read_regular("/proc/self", ["status"], limit=1 << 20)) > 10  # within the limit it is read whole


def test_links_on_the_way_or_at_the_end_are_refused_and_writes_never_go_through_them(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("s3cret")
    (root / "via").symlink_to(outside, target_is_directory=True)
    (root / "real" / "link").symlink_to(outside / "secret")
    with pytest.raises(UnsafeFile, match="via is a symbolic link, not a directory"):
        read_regular(str(root), ["via", "secret"], limit=100)
    with pytest.raises(UnsafeFile, match="real/link is a symbolic link"):
        read_regular(str(root), ["real", "link"], limit=100)
    with pytest.raises(UnsafeFile, match="via is a symbolic link"):
        write_regular(str(root), ["via", "new"], b"x")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert write_regular(str(root), ["real", "link"], b"replaced")  # the link is replaced, its target kept
    assert (outside / "secret").read_text() == "s3cret" and (root / "real" / "link").read_bytes() == b"replaced"
    assert not write_regular(str(root), ["real", "link"], b"other", keep_existing=True)
    assert lexists(str(root), ["real", "link"]) and not lexists(str(root), ["real", "nope"])
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(UnsafeFile, match="cannot name one entry"):
            read_regular(str(root), ["real", bad], limit=100)
    assert not list(root.rglob("*.tmp"))  # no temp file left behind
