"""One redaction for everything a command prints or writes: API keys, and credentials in URLs
and in the headers a server repeats back in an error.

Every printer and writer (the CLI edge, run.json, the engine's errors, reports) passes text
through :func:`redact`; a key becomes known to it with :func:`register_secret` as soon as a
command reads it from a flag or the environment. Besides the keys it knows, it masks what has
the shape of a credential wherever it appears:

- the user part of a URL: ``http://ann:pw@host`` keeps the name (``ann:***@``), a bare token
  ``http://TOKEN@host`` goes whole (``***@``); the last ``@`` before the host ends it, so a raw
  ``@`` inside a password (``http://ann:p@ss@host``) is masked with the rest;
- a credential in a query string: ``?api_key=``, ``&key=``, ``token=``, ``access_token=``,
  ``sig=``, ``password=`` and the like;
- headers and settings echoed in an error: ``Authorization: Bearer ...``, ``Basic ...``,
  ``x-api-key: ...``, ``"api_key": "..."``;
- a key in the shape the big providers give them (``sk-...``, ``hf_...``), even where nothing
  said it was one (a key typed as a stray word).

Data (a teacher's answers, the user's records) is never passed through it: only what the program
itself says about URLs, settings and errors.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import re
import sys
from typing import Any, Iterator, TextIO

MASK = "***"
SECRET = "[secret]"
# What a value already masked looks like (here, or by a teacher that masks its own key).
_MASKS = (MASK, SECRET, "[api key]", "[hidden]")

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]+:/{1,2})(?P<userinfo>[^/?#\s'\"<>`]*)@")
# Names a query string gives a credential: the whole name, or its last part after _ - or .
# (client_secret, x-api-key), so that monkey= or tokens= stay as they are.
_QUERY_NAMES = r"(?:api[_-]?key|key|token|secret|password|passwd|pwd|pass|sig|signature|auth|credentials?|jwt)"
_QUERY = re.compile(rf"(?P<name>[?&;](?:[A-Za-z0-9_.-]*[_.-])?{_QUERY_NAMES}=)(?P<value>[^&#\s'\"<>`]+)",
                    re.IGNORECASE)
# Outside a query string only names that can mean nothing but a credential.
_SETTING_NAMES = (r"(?:x-)?api[_-]?key|(?:proxy-)?authorization|access[_-]token|auth[_-]token|refresh[_-]token|"
                  r"id[_-]token|client[_-]secret|secret[_-]key|password|passwd")
_SETTING = re.compile(rf"(?P<name>\b(?:{_SETTING_NAMES})['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|token)\s+)?)"
                      rf"(?P<value>(?!(?:bearer|basic|token)\b)[^\s'\"&,;<>`]+)", re.IGNORECASE)
_BEARER = re.compile(r"(?P<name>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
# Prefixes of the keys of OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Hugging Face (hf_) and GitHub.
_KEY_SHAPE = re.compile(r"\b(?:sk-|hf_|ghp_|gho_|github_pat_)[A-Za-z0-9_-]{16,}")
_BASIC = re.compile(r"(?P<name>\bbasic\s+)(?P<value>[A-Za-z0-9+/]{4,}={0,2})", re.IGNORECASE)

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this value wherever it would be printed (keys shorter than 4 characters are not worth it)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _userinfo(m: re.Match) -> str:
    user, colon, password = m["userinfo"].partition(":")
    # A name with a password keeps the name; a lone token (or a name with an empty password,
    # as some services take a token) is the secret itself.
    shown = f"{user}:{MASK}" if colon and password and user else MASK
    return f"{m['scheme']}{shown}@"


def redact_url(url: str | None) -> str | None:
    """A URL (or text holding URLs) with the credentials of its user part and query masked.

    >>> redact_url("http://ann:s3cret@host:8000/v1")
    'http://ann:***@host:8000/v1'
    >>> redact_url("http://ann:p@ss@host/v1 and https://TOKEN@host/v1?api_key=k1&x=2")
    'http://ann:***@host/v1 and https://***@host/v1?api_key=***&x=2'
    """
    if url is None:
        return None
    return _QUERY.sub(_masked, _USERINFO.sub(_userinfo, url))


def _masked(m: re.Match) -> str:
    return m[0] if m["value"] in _MASKS else f"{m['name']}{MASK}"


def _basic(m: re.Match) -> str:
    # "Basic" is also a word: mask only what decodes as the user:password of Basic auth.
    try:
        decoded = base64.b64decode(m["value"] + "=" * (-len(m["value"]) % 4), validate=True)
    except (binascii.Error, ValueError):
        return m[0]
    return f"{m['name']}{MASK}" if b":" in decoded else m[0]


def redact(text: str) -> str:
    """Text safe to print or write: registered secrets and every credential-shaped part masked.

    >>> redact("cannot reach http://ann:s3cret@host:8000/v1")
    'cannot reach http://ann:***@host:8000/v1'
    >>> redact("upstream said: Authorization: Bearer abc.def-123")
    'upstream said: Authorization: Bearer ***'
    """
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, SECRET)
    text = _KEY_SHAPE.sub(SECRET, text)
    text = redact_url(text)
    text = _SETTING.sub(_masked, text)
    text = _BEARER.sub(_masked, text)
    return _BASIC.sub(_basic, text)


def redact_record(value: Any) -> Any:
    """A JSON-like record (settings for run.json, eval.json) with every string in it redacted;
    keys, numbers and the shape as they were.

    >>> redact_record({"base_url": "http://TOKEN@host/v1", "k": [1, "x"]})
    {'base_url': 'http://***@host/v1', 'k': [1, 'x']}
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_record(item) for item in value]
    return value


class RedactedStream:
    """A text stream whose every write passes through :func:`redact` first; the rest is the
    stream's own (isatty, fileno, encoding...), so progress bars draw as before."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(redact(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_stderr() -> Iterator[None]:
    """While a command runs, whatever reaches sys.stderr (its messages, its progress bar, a
    library's warning) is redacted. stdout is left alone: it carries data (a dry run's prompt)."""
    previous = sys.stderr
    sys.stderr = RedactedStream(previous)
    try:
        yield
    finally:
        sys.stderr = previous
