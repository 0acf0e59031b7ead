"""The git + DVC data registry of a workspace: versions of the labelled set, one tag per version.

Every operation is safe to rerun: a crash between `dvc add`, the commit, the tag and the push is
repaired by running the same call again (it finds what was already done and does the rest).

A push that fails (remote unreachable, 5xx, full disk) leaves a tagged version that is only local;
`ensure_pushed` — called by every later dataset run, even one with no new labels — pushes it once the
remote answers. What was pushed last, and where, is remembered in `.dvc/tmp/` (not versioned).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from labelloop.core.faults import crash_point
from labelloop.core.redact import redact_text, redact_uri
from labelloop.core.retry import DEFAULT_RETRY, RetryPolicy, TransientError, with_retries

DATA_TAG_PREFIX = "data-v"
HOLDOUT_TAG = "holdout-v1"


class VersioningError(RuntimeError):
    """git or DVC refused an operation; the message carries their words."""


class RemoteUnavailable(VersioningError, TransientError):
    """`dvc push` could not reach or write the remote; the version stays local until a rerun pushes it."""


PUSHED_MARKER = Path(".dvc") / "tmp" / "labelloop-pushed.json"


def git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=False,  # failures become VersioningError
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

    _rebind_dvc_console()
    return Repo(str(repo))


def _rebind_dvc_console() -> None:
    """`import dvc` binds DVC's console handlers to the sys.stdout/sys.stderr of that moment, and they
    raise on a failed write: once that stream is closed (a daemon, a swapped or captured stream), any
    DVC log line — a per-file push failure included — became the operation's error. Point them at the
    current streams before each use."""
    from dvc.logger import LoggerHandler

    for name in DVC_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, LoggerHandler):
                current = sys.stderr if handler.level >= logging.WARNING else sys.stdout
                # Assigned, not setStream(): that flushes the old stream, which raises once closed.
                with handler.lock or contextlib.nullcontext():
                    handler.stream = current


@contextlib.contextmanager
def dvc_errors(action: str, repo: Path) -> Iterator[None]:
    """Turn whatever DVC raises into one VersioningError naming the action and the reason, never a bare
    exception tuple such as dulwich's `FileLocked('.git/index', '.git/index.lock')`."""
    try:
        yield
    except VersioningError:
        raise
    except Exception as error:  # DVC raises its own errors, OSError, dulwich and YAML errors alike
        raise VersioningError(f"{action} in the data registry {repo} failed: {dvc_reason(error)}") from error


def dvc_reason(error: BaseException) -> str:
    """A readable reason for a DVC failure, its causes included (the root cause is what a user acts on)."""
    import errno

    reasons: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(reasons) < 4:
        lock_file = getattr(seen, "lockfilename", None)
        if lock_file is not None:  # dulwich.file.FileLocked
            text = (f"{os.fsdecode(lock_file)} exists: a git or DVC process is writing there, or one was killed "
                    "while it did (a run holding the workspace lock clears a stale lock)")
        elif isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            text = (f"no space left on device{f' writing {seen.filename}' if seen.filename else ''} "
                    "(free space there and rerun: the rerun completes the version)")
        elif isinstance(seen, OSError) and seen.strerror:
            text = f"{type(seen).__name__}: {seen.strerror}{f': {seen.filename}' if seen.filename else ''}"
        elif len(seen.args) > 1:
            text = f"{type(seen).__name__}: {', '.join(str(a) for a in seen.args)}"
        else:
            text = f"{type(seen).__name__}: {seen}" if str(seen) else type(seen).__name__
        if text not in reasons:
            reasons.append(text)
        seen = seen.__cause__ or seen.__context__
    return " — caused by ".join(reasons)


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
    from dvc.config_schema import RelPath

    with _dvc_repo(repo) as dvc_repo, dvc_repo.config.edit() as conf:
        conf["core"]["remote"] = "local"
        conf["core"]["autostage"] = True
        conf["core"]["analytics"] = False
        # Written relative to .dvc/ (DVC's RelPath): DVC writes its config as ASCII, so an absolute
        # path under a non-ASCII directory fails there; relative, it is also moved with the workspace.
        conf["remote"]["local"] = {"url": RelPath(str(remote_dir.resolve()))}
    (repo / "data").mkdir(exist_ok=True)
    git(repo, "add", "-A")
    if git(repo, "status", "--porcelain"):
        git(repo, "commit", "-q", "-m", "Initialise the data registry")


def _quiet_stdout():
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def set_remote(repo: Path, url: str, name: str = "local") -> None:
    """Make `url` the default DVC remote.

    Credentials in the URL (`https://user:pass@host/...`, `?token=`) go only to `.dvc/config.local`,
    which git ignores (DVC's place for secrets); the committed `.dvc/config` and the commit message get
    the redacted URL, so no version of the registry carries the secret.
    """
    from dvc.config_schema import RelPath

    shown = redact_uri(url)
    value: str = url
    if "://" not in url and not url.isascii():
        value = RelPath(str(Path(url).expanduser().absolute()))  # DVC writes ASCII only; relative to .dvc/ may be
    committed = shown if shown != url else value
    if not str(committed).isascii() and not isinstance(committed, RelPath):
        raise VersioningError(f"the DVC remote {shown!r} has non-ASCII characters, which DVC cannot write into "
                              ".dvc/config; use an ASCII path or URL (percent-encode a URL)")
    try:
        with _dvc_repo(repo) as dvc_repo:
            with dvc_repo.config.edit("local") as local:
                if shown != url:
                    local["remote"][name] = {"url": url}
                else:  # a credential set before must not keep overriding the new URL
                    local.get("remote", {}).pop(name, None)
            with dvc_repo.config.edit() as conf:
                conf["core"]["remote"] = name
                conf["remote"][name] = {"url": committed}
    except UnicodeEncodeError as error:
        raise VersioningError(f"the DVC remote {shown!r} cannot be written into .dvc/config: DVC writes it as "
                              f"ASCII ({error.reason}); use an ASCII path or URL") from None
    git(repo, "add", ".dvc/config")
    if git(repo, "status", "--porcelain", ".dvc/config"):
        git(repo, "commit", "-q", "-m", f"DVC remote {name} -> {shown}")


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
    with dvc_errors(f"dvc status {pointer}", repo), _dvc_repo(repo) as dvc_repo:
        if dvc_repo.status(targets=[str(repo / pointer)]):
            return None
    return tag


def commit_version(repo: Path, paths: list[Path], message: str, tag: str | None = None,
                   retry: RetryPolicy = DEFAULT_RETRY) -> tuple[str, bool]:
    """`dvc add` the data files, commit them (and the plain-git files), tag, push (with `retry`).

    Returns (tag, created). If HEAD already carries a data tag and nothing changed, that tag is
    returned with created=False: a rerun after success makes no second version.
    """
    with dvc_errors(f"dvc add {', '.join(p.name for p in paths)}", repo), _dvc_repo(repo) as dvc_repo:
        dvc_repo.add([str(p.resolve()) for p in paths])
    # Everything in the registry is either git-tracked or ignored by DVC's own .gitignore files.
    git(repo, "add", "-A")
    dirty = bool(git(repo, "status", "--porcelain"))
    existing = tag_of_head(repo)
    if not dirty and existing is not None and tag is None:
        ensure_pushed(repo, retry)
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
    push(repo, retry)
    return tag, True


def remote_url(repo: Path) -> str:
    """The URL of the default DVC remote ("" when none is configured)."""
    with _dvc_repo(repo) as dvc_repo:
        config = dvc_repo.config
        name = config["core"].get("remote", "")
        return str(config["remote"].get(name, {}).get("url", "")) if name else ""


def push(repo: Path, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Push DVC-tracked data to the default remote (content-addressed, so repeats are cheap and a
    retry is safe). Bounded retries with backoff (`retry`); then one `RemoteUnavailable`
    naming the remote and DVC's own reason."""
    url = remote_url(repo)
    with_retries(f"dvc push to {redact_uri(url)}", lambda: _push_once(repo, url), retry)
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
        # First in line: the reason is kept even if a console handler after it fails.
        logging.getLogger(name).handlers.insert(0, errors)
    try:
        with _dvc_repo(repo) as dvc_repo:
            dvc_repo.push()
    except Exception as error:  # noqa: BLE001 — DVC raises many types (UploadError, OSError, config errors) for one failed push
        reason = errors.messages[0] if errors.messages else f"{type(error).__name__}: {error}"
        # A local path that cannot be a directory or is not writable does not heal by retrying.
        permanent = isinstance(error, (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError))
        message = redact_text(f"dvc push to the remote {url or '(none configured)'} failed: {error} — {reason[:400]}")
        # DVC's own exception may repeat a credential of the URL: it is not chained (tracebacks reach logs).
        raise (VersioningError if permanent else RemoteUnavailable)(message) from (error if redact_uri(url) == url else None)
    finally:
        for name in DVC_LOGGERS:
            logging.getLogger(name).removeHandler(errors)


def _write_pushed_marker(repo: Path, url: str) -> None:
    from labelloop.core.io import write_json

    write_json(repo / PUSHED_MARKER, {"commit": head_sha(repo), "remote": redact_uri(url)})


def ensure_pushed(repo: Path, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    """Push unless HEAD was already pushed to the current remote; True when it pushed."""
    marker = repo / PUSHED_MARKER
    try:
        last = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        last = {}
    if last == {"commit": head_sha(repo), "remote": redact_uri(remote_url(repo))}:
        return False
    push(repo, retry)
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


def show_at(repo: Path, rev: str, relative_path: str) -> str | None:
    """A git-tracked file's text at `rev` (None when the file is not in that revision)."""
    result = subprocess.run(["git", "show", f"{rev}:{relative_path}"], cwd=repo, capture_output=True, text=True,
                            check=False, env=_git_env())
    return result.stdout if result.returncode == 0 else None


def tags_merged_into(repo: Path, rev: str) -> list[str]:
    """The data tags reachable from `rev` (itself included), oldest first."""
    merged = set(git(repo, "tag", "--merged", rev, "--list", f"{DATA_TAG_PREFIX}*").split())
    return [t for t in data_tags(repo) if t in merged]


# -- the production line -----------------------------------------------------------------------------
PRODUCTION_BRANCH = "main"
# Files labelloop itself writes and commits with each data version: a version interrupted between
# `dvc add` and the commit leaves them changed, and the next dataset run commits them. They are never
# an experiment's change.
VERSION_FILES = frozenset({"data/labeled.parquet.dvc", "data/holdout.parquet.dvc", "dataset_card.json", "exclusions.json",
                           # the audit set: untracked (and not yet in DVC's data/.gitignore) before its first version
                           "data/audit.parquet.dvc", "data/audit.parquet", "data/.gitignore"})


def _changed_files(repo: Path) -> tuple[list[str], list[str]]:
    """(tracked files changed, untracked files not ignored) in the working tree, VERSION_FILES left out."""
    result = subprocess.run(["git", "status", "--porcelain", "-z"], cwd=repo, capture_output=True, text=True,
                            check=False, env=_git_env())
    if result.returncode != 0:
        raise VersioningError(f"git status failed in {repo}: {result.stderr.strip()}")
    tracked: list[str] = []
    untracked: list[str] = []
    entries = iter(result.stdout.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename/copy is followed by its source path
            next(entries, None)
        if path in VERSION_FILES:
            continue
        (untracked if code == "??" else tracked).append(path)
    return tracked, untracked


def require_production_line(repo: Path) -> None:
    """Refuse to version or train from a registry that is off its production line.

    The cycle commits, tags and trains from the registry's working tree: on a detached HEAD (after
    `git checkout data-v3`) its next version would hang off an old one, and an edited `params.yaml`
    (`dvc exp run -S ...`) or `dvc repro`'s outputs would be committed into the next version and train
    the production model. Files DVC ignores (data, caches) do not count.
    """
    problems, fixes = [], []
    branch = subprocess.run(["git", "symbolic-ref", "-q", "--short", "HEAD"], cwd=repo, capture_output=True,
                            text=True, check=False, env=_git_env()).stdout.strip()  # fails on a detached HEAD: ""
    if branch != PRODUCTION_BRANCH:
        if branch:
            where = f"on branch {branch!r}"
        else:
            at = (git(repo, "describe", "--tags", "--exact-match", "HEAD", check=False)
                  or git(repo, "rev-parse", "--short", "HEAD"))
            where = f"at a detached HEAD ({at})"
        problems.append(f"it is {where}, not on branch {PRODUCTION_BRANCH}")
        fixes.append(f"`git -C {repo} checkout {PRODUCTION_BRANCH} && dvc --cd {repo} checkout`")
    tracked, untracked = _changed_files(repo)
    if tracked:
        problems.append(f"tracked files are changed: {', '.join(tracked)}")
        fixes.append(f"`git -C {repo} checkout -- {' '.join(tracked)}` (discards those edits)")
    if untracked:
        problems.append(f"untracked files would be committed into the next data version: {', '.join(untracked)}")
        fixes.append(f"`git -C {repo} clean -fd -- {' '.join(untracked)}` (or move them away)")
    if problems:
        raise VersioningError(
            f"the data registry {repo} is off its production line: {'; '.join(problems)}. Nothing was written. "
            f"Return with {' then '.join(fixes)}. To rebuild or experiment on an old version use a separate "
            f"checkout: `labelloop data checkout data-vN --to DIR`, then `dvc repro` / `dvc exp run` there.")


def checkout_to(repo: Path, tag: str, destination: Path) -> Path:
    """A separate clone of the registry at data tag `tag`, its data pulled from the registry's DVC remote.

    `dvc repro` and `dvc exp run` work there without touching the live registry (the clone's DVC remote
    is set in its untracked `.dvc/config.local`, so its tracked files stay as the tag has them).
    """
    tags = data_tags(repo)
    if tag not in tags:
        raise ValueError(f"unknown data tag {tag!r}; known: {', '.join(tags) or '(none)'}")
    destination = Path(destination).expanduser().resolve()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(f"{destination} is not an empty directory; choose a new or empty one for the checkout")
    url = remote_url(repo)
    created_dir = not destination.exists()
    try:
        git(repo, "clone", "-q", "--no-checkout", str(repo.resolve()), str(destination))
        git(destination, "checkout", "-q", "-b", f"from-{tag}", tag)
        with _dvc_repo(destination) as dvc_repo:
            if url:
                with dvc_repo.config.edit("local") as conf:
                    conf["core"]["remote"] = "local"
                    conf["remote"]["local"] = {"url": url}
        # The data files only: the pipeline's outputs (model/) are what `dvc repro` will build there.
        pointers = [str(destination / p) for p in git(destination, "ls-files", "*.dvc").split()]
        with _dvc_repo(destination) as dvc_repo:
            dvc_repo.pull(targets=pointers)
    except Exception as error:  # git, DVC config or pull errors: leave no half-made checkout behind
        import shutil

        if created_dir:
            shutil.rmtree(destination, ignore_errors=True)
        else:
            for child in list(destination.iterdir()):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        if isinstance(error, VersioningError):
            raise
        raise VersioningError(f"checking out {tag} into {destination} failed: {type(error).__name__}: {error}") from error
    return destination


# -- recovery after a killed run ---------------------------------------------------------------------
# git creates `<file>.lock` (O_EXCL), writes it and renames it over `<file>`; a git (or DVC's dulwich)
# killed in between leaves the lock, and every later git write fails on it ("index.lock: File exists").
GIT_LOCK_FILES = ("index.lock", "HEAD.lock", "ORIG_HEAD.lock", "config.lock", "packed-refs.lock", "shallow.lock")
# DVC's repo lock and its rwlock guard (`dvc/lock.py`). By default (zc.lockfile) they are flock'ed files
# left on disk after every run, harmless: the kernel drops the flock of a dead process. With
# `core.hardlink_lock` (flufl) the lock is a hard link to a `<md5>.lock` claim and a dead holder's link
# keeps DVC locked out for a year.
DVC_LOCK_FILES = ("lock", "rwlock.lock")
DVC_LOCK_CLAIM = re.compile(r"^[0-9a-f]{32}\.lock$")
DVC_RWLOCK = "rwlock"  # JSON of pid -> paths, rewritten in place (a kill can tear it)
# Temp files a killed writer leaves: labelloop's atomic writes (`.NAME.XXXXXXXX.tmp`, labelloop.core.io) and
# DVC's partial copies (`NAME.<22 urlsafe chars>.tmp`, dvc_objects' tmp_fname), in the tree and the cache.
LABELLOOP_TEMP = re.compile(r"^\..+\.tmp$")
DVC_TEMP = re.compile(r"^.*\.[A-Za-z0-9_-]{22}\.tmp$")

log = logging.getLogger(__name__)


def recover_registry(repo: Path) -> list[str]:
    """Clear what a run killed inside git or DVC left in the registry, so the normal (idempotent) path
    can complete the interrupted version. Returns what it removed or restored, relative to `repo`.

    PRECONDITION: the caller holds the workspace lock (`labelloop.core.lock.workspace_lock`). That lock is
    the proof that no other labelloop process works in this workspace, so every git/DVC lock and temp
    file found here belongs to a dead run. Called without the lock, it could delete a live writer's
    lock and corrupt the repository. Files a live process still holds by `flock` are always left.

    - git: `.git/{index,HEAD,ORIG_HEAD,config,packed-refs,shallow}.lock`, `.git/refs/**/*.lock`, and
      half-written objects (`.git/objects/??/tmp_obj_*`, `.git/objects/pack/tmp_*`);
    - DVC: a hardlink lock (`.dvc/tmp/lock`, `.dvc/tmp/rwlock.lock` linked to a `<md5>.lock` claim) and
      its claims; the default flock'ed lock files are left (a dead holder's flock is already gone);
      `.dvc/tmp/rwlock` when torn, or its entries whose pid is dead or was reused after it was written;
    - temp files of labelloop's atomic writes and DVC's partial copies anywhere outside `.git`;
    - a labelloop `.dvc` pointer DVC was killed while rewriting (it writes them in place): restored
      from HEAD (the next `dvc add` rewrites it), or removed when HEAD has none.
    """
    git_dir, dvc_tmp = repo / ".git", repo / ".dvc" / "tmp"
    stale: list[Path] = [git_dir / name for name in GIT_LOCK_FILES]
    stale += list((git_dir / "refs").rglob("*.lock")) if (git_dir / "refs").is_dir() else []
    stale += list(git_dir.glob("objects/??/tmp_obj_*")) + list(git_dir.glob("objects/pack/tmp_*"))
    if dvc_tmp.is_dir():
        stale += [p for p in dvc_tmp.iterdir() if p.is_file() and (
            DVC_LOCK_CLAIM.match(p.name) or (p.name in DVC_LOCK_FILES and p.stat().st_nlink > 1 and not _flock_held(p)))]
    stale += _temp_files(repo)
    done = []
    for path in stale:
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            done.append(str(path.relative_to(repo)))
    done += _recover_rwlock(repo, dvc_tmp / DVC_RWLOCK)
    done += _restore_torn_pointers(repo)
    if done:
        log.warning("data registry %s: cleared what a killed run left: %s", repo, ", ".join(done))
    return done


def _flock_held(path: Path) -> bool:
    """True when a live process holds `path` with flock (as DVC's lock does while it runs)."""
    import fcntl

    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    return False


def _temp_files(repo: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(repo):
        if Path(directory) == repo:
            subdirs[:] = [d for d in subdirs if d != ".git"]
        found += [Path(directory) / f for f in files if f.endswith(".tmp") and (LABELLOOP_TEMP.match(f) or DVC_TEMP.match(f))]
    return found


def _recover_rwlock(repo: Path, path: Path) -> list[str]:
    """Drop the rwlock entries of dead processes (and of a pid reused since); remove a torn file."""
    import psutil  # DVC's own dependency, used by DVC for the same check

    try:
        text, written = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return []
    try:
        lock = json.loads(text)
        modes = {mode: dict(lock.get(mode) or {}) for mode in ("read", "write")}
    except (json.JSONDecodeError, AttributeError, TypeError):
        path.unlink(missing_ok=True)
        return [f"{path.relative_to(repo)} (torn)"]

    def alive(info) -> bool:
        try:
            return psutil.Process(int(info["pid"])).create_time() <= written + 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
            return False

    kept = {"read": {p: [i for i in infos if alive(i)] for p, infos in modes["read"].items()},
            "write": {p: info for p, info in modes["write"].items() if alive(info)}}
    kept["read"] = {p: infos for p, infos in kept["read"].items() if infos}
    if kept == modes:
        return []
    if not kept["read"] and not kept["write"]:
        path.unlink(missing_ok=True)
    else:
        from labelloop.core.io import write_text

        write_text(path, json.dumps(kept))
    return [f"{path.relative_to(repo)} (entries of dead processes)"]


def _restore_torn_pointers(repo: Path) -> list[str]:
    import yaml

    done = []
    for name in sorted(f for f in VERSION_FILES if f.endswith(".dvc")):
        pointer = repo / name
        if not pointer.is_file():
            continue
        try:
            outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs")
            whole = isinstance(outs, list) and bool(outs) and all(
                isinstance(o, dict) and o.get("path") and o.get("md5") for o in outs)
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError):
            whole = False
        if whole:
            continue
        if git(repo, "ls-tree", "--name-only", "HEAD", "--", name, check=False):
            git(repo, "checkout", "HEAD", "--", name)
            done.append(f"{name} (torn, restored from HEAD)")
        else:
            pointer.unlink()
            done.append(f"{name} (torn, removed)")
    return done
