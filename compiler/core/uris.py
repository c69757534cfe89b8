"""Which URIs a spec may name as inputs: the schemes the runtime reads through fsspec, never with credentials.

Shared by the compiler's path rule (compiler/reading/rules.py) and the runtime's fetcher
(runtime/remote/fetch.py), so validate refuses exactly what the jobs would.
"""

from __future__ import annotations

import re

SCHEMES = ("s3", "gs", "hf", "https")
URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
CREDENTIALS_HINT = ("give credentials in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                    "GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN)")


def is_uri(value: str) -> bool:
    return bool(URI.match(value))


def uri_problem(uri: str) -> tuple[str, str] | None:
    """(what is wrong, hint) for a URI the runtime would refuse; None for a readable one."""
    scheme, _, rest = uri.partition("://")
    if scheme.lower() not in SCHEMES:
        return (f"the {scheme}:// scheme is not supported", f"remote inputs are {', '.join(s + '://' for s in SCHEMES)}, "
                "or a local path")
    host = rest.split("/", 1)[0]
    if "@" in host or "?" in rest or "#" in rest:
        return ("credentials or a query string in a URI are refused", CREDENTIALS_HINT)
    if not host or not rest.split("/", 1)[-1] or rest.endswith("//"):
        return ("no bucket/repository and object path", "e.g. s3://bucket/path/train.jsonl")
    return None


def shown(uri: str) -> str:
    """A URI as it may be printed: any user:password@, query string and fragment cut out."""
    scheme, _, rest = uri.partition("://")
    host, _, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1]
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    return f"{scheme}://{host}/{path}" if path else f"{scheme}://{host}"
