"""The git + DVC data registry of a workspace: versions of the labelled set, one tag per version.

Every operation is safe to rerun: a crash between `dvc add`, the commit, the tag and the push is
repaired by running the same call again (it finds what was already done and does the rest).

A push that fails (remote unreachable, 5xx, full disk) leaves a tagged version that is only local;
`ensure_pushed` — called by every later dataset run, even one with no new labels — pushes it once the
remote answers. What was pushed last, and where, is remembered in `.dvc/tmp/` (not versioned).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

from labelloop.faults import crash_point
from labelloop.retry import TransientError, with_retries

DATA_TAG_PREFIX = "data-v"
HOLDOUT_TAG = "holdout-v1"


class VersioningError(RuntimeError):
    """git or DVC refused an operation; the message carries their words."""


class RemoteUnavailable(VersioningError, TransientError):
    """`dvc push` could not reach or write the remote; the version stays local until a rerun pushes it."""


PUSHED_MARKER = Path(".dvc") / "tmp" / "labelloop-pushed.json"


def git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True,
        env=_git_env(),
    )
    if check and result.returncode != 0:
        raise VersioningError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def _git_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    # The workspace registry has its own identity; it never needs the user's git config.
    env.setdefault("GIT_AUTHOR_NAME", "labelloop")
    env.setdefault("GIT_AUTHOR_EMAIL", "labelloop@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "labelloop")
    env.setdefault("GIT_COMMITTER_EMAIL", "labelloop@localhost")
    return env


def _dvc_repo(repo: Path):
    from dvc.repo import Repo

    return Repo(str(repo))


def init_registry(repo: Path, remote_dir: Path) -> None:
    """git init + dvc init + a default local remote; idempotent."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    if not (repo / ".dvc").exists():
        import logging

        from dvc.repo import Repo

        init_logger = logging.getLogger("dvc.repo.init")
        level = init_logger.level
        init_logger.setLevel(logging.WARNING)  # "Initialized DVC repository" + git advice, meant for a shell user
        try:
            with _quiet_stdout():
                Repo.init(str(repo))
        finally:
            init_logger.setLevel(level)
    remote_dir.mkdir(parents=True, exist_ok=True)
    with _dvc_repo(repo) as dvc_repo:
        with dvc_repo.config.edit() as conf:
            conf["core"]["remote"] = "local"
            conf["core"]["autostage"] = True
            conf["core"]["analytics"] = False
            conf["remote"]["local"] = {"url": str(remote_dir.resolve())}
    (repo / "data").mkdir(exist_ok=True)
    git(repo, "add", "-A")
    if git(repo, "status", "--porcelain"):
        git(repo, "commit", "-q", "-m", "Initialise the data registry")


def _quiet_stdout():
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def set_remote(repo: Path, url: str, name: str = "local") -> None:
    with _dvc_repo(repo) as dvc_repo:
        with dvc_repo.config.edit() as conf:
            conf["core"]["remote"] = name
            conf["remote"][name] = {"url": url}
    git(repo, "add", ".dvc/config")
    if git(repo, "status", "--porcelain", ".dvc/config"):
        git(repo, "commit", "-q", "-m", f"DVC remote {name} -> {url}")


def data_tags(repo: Path) -> list[str]:
    tags = git(repo, "tag", "--list", f"{DATA_TAG_PREFIX}*").split()
    return sorted(tags, key=lambda t: int(t[len(DATA_TAG_PREFIX):]) if t[len(DATA_TAG_PREFIX):].isdigit() else -1)


def next_data_tag(repo: Path) -> str:
    tags = data_tags(repo)
    last = int(tags[-1][len(DATA_TAG_PREFIX):]) if tags else 0
    return f"{DATA_TAG_PREFIX}{last + 1}"


def head_sha(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


def tag_of_head(repo: Path) -> str | None:
    """The data tag on HEAD, if HEAD is a tagged data version."""
    tags = git(repo, "tag", "--points-at", "HEAD", "--list", f"{DATA_TAG_PREFIX}*").split()
    return sorted(tags)[-1] if tags else None


def current_data_tag(repo: Path) -> str | None:
    """The newest data tag reachable from HEAD."""
    out = git(repo, "describe", "--tags", "--abbrev=0", "--match", f"{DATA_TAG_PREFIX}*", check=False)
    return out or None


def version_of(repo: Path, path: Path) -> str | None:
    """The data tag whose content `path` has now: the newest tag reachable from HEAD, provided the
    file's `.dvc` pointer has not changed since that tag, neither in later commits nor uncommitted."""
    tag = current_data_tag(repo)
    if tag is None:
        return None
    pointer = str(Path(str(path.resolve()) + ".dvc").relative_to(repo.resolve()))
    changed_since = git(repo, "diff", "--name-only", tag, "--", pointer)
    if changed_since:
        return None
    with _dvc_repo(repo) as dvc_repo:
        if dvc_repo.status(targets=[str(repo / pointer)]):
            return None
    return tag


def commit_version(repo: Path, paths: list[Path], message: str, tag: str | None = None) -> tuple[str, bool]:
    """`dvc add` the data files, commit them (and the plain-git files), tag, push.

    Returns (tag, created). If HEAD already carries a data tag and nothing changed, that tag is
    returned with created=False: a rerun after success makes no second version.
    """
    with _dvc_repo(repo) as dvc_repo:
        dvc_repo.add([str(p.resolve()) for p in paths])
    # Everything in the registry is either git-tracked or ignored by DVC's own .gitignore files.
    git(repo, "add", "-A")
    dirty = bool(git(repo, "status", "--porcelain"))
    existing = tag_of_head(repo)
    if not dirty and existing is not None and tag is None:
        ensure_pushed(repo)
        return existing, False
    if dirty:
        git(repo, "commit", "-q", "-m", message)
        crash_point("dataset.after_commit")
    if tag is None:
        existing = tag_of_head(repo)
        tag = existing or next_data_tag(repo)
    if tag not in git(repo, "tag", "--points-at", "HEAD").split():
        git(repo, "tag", "-a", tag, "-m", message)
    crash_point("dataset.after_tag")
    push(repo)
    return tag, True


def remote_url(repo: Path) -> str:
    """The URL of the default DVC remote ("" when none is configured)."""
    with _dvc_repo(repo) as dvc_repo:
        config = dvc_repo.config
        name = config["core"].get("remote", "")
        return str(config["remote"].get(name, {}).get("url", "")) if name else ""


def push(repo: Path) -> None:
    """Push DVC-tracked data to the default remote (content-addressed, so repeats are cheap and a
    retry is safe). Bounded retries with backoff (`labelloop.retry`); then one `RemoteUnavailable`
    naming the remote and DVC's own reason."""
    url = remote_url(repo)
    with_retries(f"dvc push to {url}", lambda: _push_once(repo, url))
    _write_pushed_marker(repo, url)


class _DvcErrors(logging.Handler):
    """DVC logs the reason per file ("failed to transfer ... Connect call failed") and raises only
    "2 files failed to upload": keep the first reason for the message."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        self.messages.append(f"{record.getMessage()}: {cause}" if cause is not None else record.getMessage())


DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")


def _push_once(repo: Path, url: str) -> None:
    errors = _DvcErrors()
    for name in DVC_LOGGERS:
        logging.getLogger(name).addHandler(errors)
    try:
        with _dvc_repo(repo) as dvc_repo:
            dvc_repo.push()
    except Exception as error:  # DVC raises many types (UploadError, OSError, config errors) for one failed push
        reason = errors.messages[0] if errors.messages else f"{type(error).__name__}: {error}"
        # A local path that cannot be a directory or is not writable does not heal by retrying.
        permanent = isinstance(error, (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError))
        raise (VersioningError if permanent else RemoteUnavailable)(f"dvc push to the remote {url or '(none configured)'} failed: {error} — {reason[:400]}"
                                ) from error
    finally:
        for name in DVC_LOGGERS:
            logging.getLogger(name).removeHandler(errors)


def _write_pushed_marker(repo: Path, url: str) -> None:
    from labelloop.io import write_json

    write_json(repo / PUSHED_MARKER, {"commit": head_sha(repo), "remote": url})


def ensure_pushed(repo: Path) -> bool:
    """Push unless HEAD was already pushed to the current remote; True when it pushed."""
    marker = repo / PUSHED_MARKER
    try:
        last = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        last = {}
    if last == {"commit": head_sha(repo), "remote": remote_url(repo)}:
        return False
    push(repo)
    return True


def checkout(repo: Path, rev: str, path: Path) -> None:
    """Make `path` (a DVC-tracked file) what it was at `rev`, in the working tree only."""
    dvc_file = Path(str(path.resolve()) + ".dvc")
    git(repo, "checkout", rev, "--", str(dvc_file.relative_to(repo.resolve())))
    with _dvc_repo(repo) as dvc_repo:
        dvc_repo.checkout(targets=[str(dvc_file)], force=True)


def read_at(repo: Path, path: Path, rev: str) -> bytes:
    """The bytes of a DVC-tracked file at a git revision, without touching the working tree."""
    import dvc.api

    relative = str(path.resolve().relative_to(repo.resolve()))
    with dvc.api.open(relative, repo=str(repo), rev=rev, mode="rb") as handle:
        return handle.read()


def tag_message(repo: Path, tag: str) -> str:
    return git(repo, "tag", "-l", "--format=%(contents)", tag)


def valid_tag(tag: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", tag) is not None
