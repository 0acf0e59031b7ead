"""Reading and writing files below a trusted root without following symbolic links.

A directory another party writes into (a vendor's file drop) may hold symbolic links to secrets or
to directories elsewhere, FIFOs that block a reader forever, device files without end, or hard links
to files the other party could not read itself. Below the root, every directory is opened with
O_NOFOLLOW|O_DIRECTORY relative to its parent's descriptor (nothing is resolved twice, so nothing
can be swapped in between), files with O_NOFOLLOW|O_NONBLOCK (a FIFO opens at once instead of
waiting for a writer), and only a regular file with a single link is read: its size is checked on
the opened descriptor and the read stops at the limit + 1 bytes. Writes go to a new temp file in
the already-opened directory and are renamed over the name, which replaces a link instead of
writing through it. The root itself is configuration (an operator may point it at a link) and is
used as given.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC
_READ_CHUNK = 1 << 20


class UnsafeFile(ValueError):
    """A path below the root is not what it must be (a link, a FIFO, a device, ...); it was not read."""


class FileTooLarge(UnsafeFile):
    def __init__(self, message: str, size: int, grew: bool) -> None:
        super().__init__(message)
        self.size = size
        self.grew = grew  # the descriptor said it fitted; the read found more


def describe_mode(mode: int) -> str:
    """What kind of file a mode is, in words for an error message."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISREG, "a regular file"))
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafeFile(f"{name!r} cannot name one entry of a directory")


def _kind_at(dir_fd: int, name: str) -> str:
    try:
        return describe_mode(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return "not a directory"


@contextmanager
def open_dir(root: str, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of root/parts..., every part opened without following a link (made when `create`).

    A part that is a link, a file or anything but a directory raises UnsafeFile; a missing part
    (without `create`) raises FileNotFoundError.
    """
    if create:
        os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for depth, name in enumerate(parts):
            _check_name(name)
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ENOTDIR, errno.ELOOP):
                    where = "/".join(parts[: depth + 1])
                    raise UnsafeFile(f"{where} is {_kind_at(fd, name)}, not a directory (links are never followed)") from None
                raise
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def lexists(root: str, parts: Sequence[str]) -> bool:
    """Whether root/parts... names anything (a dangling link too), without following links."""
    *dirs, name = parts
    try:
        with open_dir(root, dirs) as dir_fd:
            _check_name(name)
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return True
    except FileNotFoundError:
        return False


def read_regular(root: str, parts: Sequence[str], limit: int) -> bytes:
    """The bytes of root/parts..., a regular file with one link and at most `limit` bytes.

    Anything else raises UnsafeFile (FileTooLarge for size) before any byte is read; the read never
    asks for more than `limit` + 1 bytes, so a file that grows (or never ends) cannot fill memory.
    """
    *dirs, name = parts
    where = "/".join(parts)
    with open_dir(root, dirs) as dir_fd:
        _check_name(name)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeFile(f"{where} is a symbolic link (links are never followed)") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeFile(f"{where} is {describe_mode(info.st_mode)}, not a regular file")
            if info.st_nlink > 1:
                raise UnsafeFile(
                    f"{where} has {info.st_nlink} hard links (a hard link can expose a file its maker could not read)")
            if info.st_size > limit:
                raise FileTooLarge(f"{where} is {info.st_size:,} bytes, above the {limit:,}-byte limit",
                                   info.st_size, grew=False)
            chunks: list[bytes] = []
            total = 0
            while total <= limit:
                chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > limit:
                raise FileTooLarge(f"{where} grew above the {limit:,}-byte limit while being read", total, grew=True)
            return b"".join(chunks)
        finally:
            os.close(fd)


def write_regular(root: str, parts: Sequence[str], data: bytes, *, keep_existing: bool = False) -> bool:
    """Write root/parts... atomically (temp file, fsync, rename) without following any link.

    The directories are made when missing, each refused if it is a link. The rename replaces whatever
    entry has the name (a link is replaced, never written through). With `keep_existing`, an existing
    regular file is left as it is (content-addressed names). Returns whether a file was written.
    """
    *dirs, name = parts
    with open_dir(root, dirs, create=True) as dir_fd:
        _check_name(name)
        if keep_existing:
            try:
                if stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    return False
            except FileNotFoundError:
                pass
        temp = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
        return True
