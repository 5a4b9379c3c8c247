"""One redaction for everything a command prints or writes: API keys and passwords in URLs.

Every printer and writer (the CLI edge, run.json, the ledger, reports, errors) passes text
through :func:`redact`; a key becomes known to it with :func:`register_secret` as soon as a
command reads it from a flag or the environment.
"""
from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<password>[^/\s@]+)@")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this value wherever it would be printed (keys shorter than 4 characters are not worth it)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact_url(url: str | None) -> str | None:
    """A URL with the password of its user part masked.

    >>> redact_url("http://ann:s3cret@host:8000/v1")
    'http://ann:***@host:8000/v1'
    """
    return None if url is None else _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def redact(text: str) -> str:
    """Text safe to print or write: registered secrets and URL passwords masked.

    >>> redact("cannot reach http://ann:s3cret@host:8000/v1")
    'cannot reach http://ann:***@host:8000/v1'
    """
    text = redact_url(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text
