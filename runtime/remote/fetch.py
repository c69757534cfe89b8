"""Remote inputs (`s3://`, `gs://`, `hf://`, `https://`) through fsspec: their versions, fetched into the store once.

A spec may name data files, tool registries, chat templates and tokenizer, teacher and checkpoint
folders by URI. Two things happen to such an input:

- `version(uri)`: what the object store says identifies this content (S3's ETag, GCS's generation,
  the Hub's blob id or LFS sha256, an HTTP ETag), read with one metadata request (a listing for a
  folder). It is the input's part of every reading job's cache key (`runtime/keys.py`), so an
  unchanged remote input keeps the jobs cached and a changed one invalidates exactly the jobs that
  read it.
- `fetch(uri, expected, remote_dir)`: the content, downloaded into `remote_dir/<sha256(uri, version)>/`
  the first time and reused after. A download goes to a temporary folder that is renamed into
  place only when complete, so a killed download is never taken for the input. If the object
  changed since the key was computed, the fetch refuses to use the new content under the old key.

Credentials come from the environment only, as each library reads them (AWS_* variables or
profile for s3fs/botocore, including AWS_ENDPOINT_URL for an S3-compatible server;
GOOGLE_APPLICATION_CREDENTIALS for gcsfs; HF_TOKEN for the Hub). A URI that carries credentials
(user:password@, a query string) is refused, and no error message, key or log line holds any.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from compiler.core.uris import is_uri, uri_problem
from compiler.core.uris import shown as _shown

# what each store reports as the identity of an object's content, in order of preference
# (content hashes before per-write ids: re-uploading the same bytes keeps the jobs cached)
VERSION_FIELDS = ("ETag", "md5Hash", "blob_id", "etag", "generation", "VersionId", "Content-MD5", "Digest")
# S3-compatible stores: fail in seconds, not minutes, when the endpoint is down (botocore and s3fs retry otherwise)
S3_OPTIONS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}},
              "use_listings_cache": False}


class RemoteInputError(RuntimeError):
    """A remote input that cannot be read: says which, why, and what to set (never a secret)."""


def check_uri(uri: str) -> str:
    """The scheme of a remote input; refuses what validate refuses (compiler/core/uris.py)."""
    problem = uri_problem(uri)
    if problem is not None:
        raise RemoteInputError(f"'{_shown(uri)}': {problem[0]}; {problem[1]}")
    return uri.split("://", 1)[0].lower()


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec

    scheme = check_uri(uri)
    options = dict(S3_OPTIONS) if scheme == "s3" else {}
    options["skip_instance_cache"] = True  # a fresh client: no listing or credential cached across versions
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:
        package = {"s3": "s3fs", "gs": "gcsfs", "hf": "huggingface_hub", "https": "aiohttp"}[scheme]
        raise RemoteInputError(f"'{_shown(uri)}': reading {scheme}:// needs the {package} package "
                               f"(pip install {package})") from exc


def _explain(uri: str, exc: BaseException) -> RemoteInputError:
    """A library error as one line a person can act on; the library's own text may name hosts, never secrets."""
    shown = _shown(uri)
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, FileNotFoundError):
        return RemoteInputError(f"'{shown}': no such object (or no access to list it); check the path")
    if name == "NoCredentialsError" or "Unable to locate credentials" in text:
        return RemoteInputError(f"'{shown}': no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                "(or AWS_PROFILE) in the environment")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError",
                "ServerTimeoutError") or isinstance(exc, (ConnectionError, TimeoutError)):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f" at {endpoint}" if endpoint and uri.startswith("s3://") else ""
        return RemoteInputError(f"'{shown}': the store{where} is unreachable ({name}); check the network and the "
                                "endpoint (AWS_ENDPOINT_URL for an S3-compatible server)")
    if isinstance(exc, PermissionError) or any(code in text for code in (
            "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "(403)", "(401)")):
        return RemoteInputError(f"'{shown}': access denied ({_first_line(text)}); check the credentials in the "
                                "environment and their permissions on this object")
    return RemoteInputError(f"'{shown}': {name}: {_first_line(text)}")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]


def _tag(entry: dict) -> str:
    lfs = entry.get("lfs") or {}
    if lfs.get("sha256"):  # the Hub: an LFS file's content hash
        return f"sha256={lfs['sha256']}"
    for name in VERSION_FIELDS:
        value = entry.get(name)
        if value:
            return f"{name}={str(value).strip(chr(34))}"
    # no content identity reported: size and modification time (a weaker check; docs/remote.md)
    return f"size={entry.get('size')},mtime={entry.get('LastModified') or entry.get('mtime') or entry.get('updated')}"


def version(uri: str) -> str:
    """The content identity of a remote file or folder, from its metadata (one request, a listing for a folder)."""
    fs, path = _filesystem(uri)
    try:
        info = fs.info(path)
        if info.get("type") == "directory":
            entries = fs.find(path, detail=True)
            if not entries:
                raise FileNotFoundError(path)
            base = path.rstrip("/") + "/"
            listing = sorted((name[len(base):] if name.startswith(base) else name, _tag(e), e.get("size"))
                             for name, e in entries.items())
            return "folder:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return _tag(info)
    except RemoteInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - each library raises its own; _explain names it
        raise _explain(uri, exc) from None


def fetch(uri: str, expected: str | None, remote_dir: Path) -> Path:
    """The local copy of `uri` at version `expected` (the one its job was keyed with; None: whatever is there now)."""
    now = version(uri)
    if expected is not None and now != expected:
        raise RemoteInputError(f"'{_shown(uri)}' changed since this run computed its cache keys ({expected} -> {now}); "
                               "run again to key the jobs on the new version")
    digest = hashlib.sha256(f"{uri}\n{now}".encode()).hexdigest()[:40]
    home = Path(remote_dir) / digest
    name = _basename(uri)
    target = home / name
    if target.exists():
        return target
    fs, path = _filesystem(uri)
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=home))
    try:
        is_dir = fs.info(path).get("type") == "directory"
        if is_dir:
            fs.get(path.rstrip("/") + "/", str(tmp / name), recursive=True)
        else:
            fs.get(path, str(tmp / name))
        if version(uri) != now:
            raise RemoteInputError(f"'{_shown(uri)}' changed while it was downloading; run again")
        try:
            os.rename(tmp / name, target)
        except OSError:
            if not target.exists():  # another rank of the same job fetched it first: theirs is complete
                raise
    except RemoteInputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _explain(uri, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (home / "source.json").write_text(json.dumps({"uri": _shown(uri), "version": now}) + "\n", encoding="utf-8")
    return target


def _basename(uri: str) -> str:
    """The last path segment, as a safe file name (names are never trusted as paths)."""
    last = uri.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".")
    return safe or "input"
