"""Credentials out of every URI labelloop puts into text (errors, logs, artifacts, MLflow, git messages).

A URI may carry a secret in its userinfo (`https://user:pass@host`, `postgresql://user:pass@db/x`) or in
its query (`?password=`, `?token=`, `?key=`, `?X-Amz-Signature=`). `redact_uri` keeps what a reader needs
to recognise the place (scheme, user, host, path, the other parameters) and replaces each secret by `***`;
`redact_text` does that for every URI inside a message (and a libpq-style `password=...`), so an error
from git, DVC or MLflow can be passed on without knowing where in it the URI sits.
"""

from __future__ import annotations

import re

MASK = "***"

# A query parameter whose name contains one of these words holds a secret.
_SECRET_PARAMETER = re.compile(r"pass|pwd|token|secret|key|sig|credential|auth|session", re.IGNORECASE)
# scheme://[userinfo@]rest — the rest ends at whitespace, a quote, or a bracket that closes the text around it.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# libpq keyword form (`host=db password=s3cret`) and the like, outside any URI.
_SECRET_KEYWORD_IN_TEXT = re.compile(r"(?i)\b([\w-]*(?:password|passwd|secret|token)[\w-]*)\s*=\s*([^\s&;,'\"]+)")
_USERINFO = re.compile(r"([^/?#@:]*):(.+)@(?=[^/?#@]*(?:[/?#]|$))")
_QUERY_PARAMETER = re.compile(r"(^|[&;])([^=&;#]+)=([^&;#]*)")


def redact_uri(uri: str) -> str:
    """`uri` with the password of its userinfo and the values of secret query parameters replaced by `***`.

    Only the secret parts change (no re-encoding), so a URI without secrets is returned as it was."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    # user:password@host — the password may hold '@', '/', '?' or '#' that its writer did not encode.
    userinfo = _USERINFO.match(rest)
    if userinfo:
        rest = f"{userinfo.group(1)}:{MASK}@{rest[userinfo.end(2) + 1:]}"
    path_start = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:path_start], rest[path_start:]
    if "?" in tail:
        path, query = tail.split("?", 1)
        fragment = ""
        if "#" in query:
            query, fragment = query.split("#", 1)
            fragment = "#" + fragment
        query = _QUERY_PARAMETER.sub(
            lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if _SECRET_PARAMETER.search(m.group(2)) and m.group(3) else m.group(0),
            query)
        tail = f"{path}?{query}{fragment}"
    return f"{scheme}://{authority}{tail}"


def redact_text(text: str) -> str:
    """`text` with every URI in it redacted (`redact_uri`) and `password=...`-style secrets masked."""
    if not isinstance(text, str):
        text = str(text)
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    return _SECRET_KEYWORD_IN_TEXT.sub(lambda m: f"{m.group(1)}={MASK}" if m.group(2) != MASK else m.group(0), text)
