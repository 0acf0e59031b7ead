"""Create (or reuse) a Label Studio personal access token for the headless admin; stdlib only.

Reads LS_URL, LS_USERNAME, LS_PASSWORD, LS_TOKEN_FILE from the environment. A token already in
LS_TOKEN_FILE is reused while the server still accepts it (POST /api/token/refresh/); otherwise the
script logs in (/user/login/ with the CSRF token) and creates one with POST /api/token/.
The token is written with mode 0600 (temp file + rename) and never printed.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import NoReturn


def _fail(message: str) -> NoReturn:
    print(f"[labelstudio] error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _token_works(url: str, token: str) -> bool:
    request = urllib.request.Request(
        f"{url}/api/token/refresh/", data=json.dumps({"refresh": token}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status == 200 and "access" in json.loads(response.read() or b"{}")
    except urllib.error.HTTPError:
        return False


def _create(url: str, username: str, password: str) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def csrf() -> str:
        for cookie in jar:
            if cookie.name == "csrftoken" and cookie.value:
                return cookie.value
        _fail("the login page set no csrftoken cookie")

    opener.open(f"{url}/user/login/", timeout=60).read()
    form = urllib.parse.urlencode({"email": username, "password": password, "csrfmiddlewaretoken": csrf()}).encode()
    login = urllib.request.Request(f"{url}/user/login/", data=form, method="POST",
                                   headers={"Referer": f"{url}/user/login/",
                                            "Content-Type": "application/x-www-form-urlencoded"})
    opener.open(login, timeout=60).read()
    if not any(cookie.name == "sessionid" for cookie in jar):
        _fail(f"login as {username} failed (wrong LS_PASSWORD, or the admin was created with another password)")
    request = urllib.request.Request(f"{url}/api/token/", data=b"{}", method="POST",
                                     headers={"Referer": f"{url}/", "X-CSRFToken": csrf(),
                                              "Content-Type": "application/json"})
    try:
        with opener.open(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 409:
            _fail(f"{username} already has a personal access token that is not in LS_TOKEN_FILE; "
                  "revoke it in Account & Settings, or start over with an empty LS_DATA_DIR")
        _fail(f"POST /api/token/ answered {error.code}: {error.read()[:300]!r}")
    token = body.get("token") or body.get("refresh") if isinstance(body, dict) else None
    if not token:
        _fail(f"POST /api/token/ returned no token (keys: {sorted(body) if isinstance(body, dict) else type(body).__name__})")
    return str(token)


def main() -> None:
    url = os.environ["LS_URL"].rstrip("/")
    path = os.environ["LS_TOKEN_FILE"]
    if os.path.exists(path):
        with open(path) as handle:
            existing = handle.read().strip()
        if existing and _token_works(url, existing):
            return
    token = _create(url, os.environ["LS_USERNAME"], os.environ["LS_PASSWORD"])
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".token.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":
    main()
