"""The Batch API of OpenAI-compatible servers, through the `openai` SDK: upload a JSONL file of
requests (`POST /v1/files`, purpose "batch"), create a batch over it (`POST /v1/batches`,
completion_window "24h"), poll it (`GET /v1/batches/{id}`) until it is completed, failed, expired
or cancelled, and download its output and error files (`GET /v1/files/{id}/content`).

Each line of the input file is one request, `{"custom_id", "method": "POST", "url", "body"}`,
the body being what a plain (unstreamed) request would send; each line of the output and error
files is `{"custom_id", "response": {"status_code", "body"}, "error"}`, in any order. A reply is
read by the same reader as an ordinary one (`_read_reply`), so a batch reply and a direct one
reach the pipeline alike.

Creating a batch is the one call that must not be repeated blindly: a reply lost on the way
back leaves a batch on the server that we would pay for twice. Each batch is created with a
tag in its metadata, and a create whose outcome is unknown is followed by a look for that tag
(`GET /v1/batches`, newest first) before it is tried again (engine/batches.py does the same
after a kill).
"""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

import openai

from ..errors import TeacherError
from ..io.secrets import redact
from ..types import Completion, Decoding
from .faults import fault_name, is_transient
from .client import make_client
from .fleet import parse_base_urls
from .openai_compat import _read_reply, _token_count
from .rate_limits import estimate_tokens

# The states after which a batch changes no more.
TERMINAL = ("completed", "failed", "expired", "cancelled")
# The metadata key our tag goes under.
TAG_KEY = "self_instruct_batch"
# Tries of a control call (upload, poll, download) that meets transient faults, and the first wait.
CALL_TRIES, CALL_BACKOFF = 6, 1.0


@dataclass
class BatchStatus:
    """What a poll says: the batch's status, its files once it has them, and why it failed."""

    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class BatchRefused(TeacherError):
    """The server refused a call for good (no Batch API, a refused key, a bad request)."""


class CreateUnknown(Exception):
    """The create call failed in a way that leaves open whether the server made the batch."""


class BatchClient:
    """Batches of one model on one OpenAI-compatible server (the first of a fleet)."""

    def __init__(self, model: str, *, base_url=None, api_key: str | None = None, api: str = "completions",
                 timeout: float = 120.0, backoff: float = CALL_BACKOFF):
        self.model_id, self.api = model, api
        url = parse_base_urls(base_url)[0]
        self.where = redact(url or "api.openai.com")
        self._client = make_client(url, api_key or "not-needed", timeout)
        self._backoff = backoff
        self._jitter = random.Random()

    @property
    def endpoint(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"

    def request_line(self, custom_id: str, prompt: str, decoding: Decoding) -> dict:
        """One line of a batch input file: the body a plain request for `prompt` sends."""
        body = dict(model=self.model_id, max_tokens=decoding.max_tokens, temperature=decoding.temperature,
                    top_p=decoding.top_p, presence_penalty=decoding.presence_penalty,
                    frequency_penalty=decoding.frequency_penalty)
        if decoding.stop:
            body["stop"] = list(decoding.stop)
        if decoding.seed is not None:
            body["seed"] = decoding.seed
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            if decoding.json:
                body["response_format"] = {"type": "json_object"}
        else:
            body["prompt"] = prompt
        return {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}

    # -- the calls -------------------------------------------------------------------------

    async def upload(self, lines: list[dict]) -> str:
        """Upload a batch input file; returns its file id."""
        payload = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        made = await self._call("upload the batch input file", lambda: self._client.files.create(
            file=("batch.jsonl", payload, "application/jsonl"), purpose="batch"))
        return made.id

    async def create(self, file_id: str, tag: str) -> str:
        """Create a batch over an uploaded file, once; returns its id. CreateUnknown when the
        server may have made it even so (no reply, a 5xx, a 429): look for the tag before trying again."""
        try:
            made = await self._client.batches.create(input_file_id=file_id, endpoint=self.endpoint,
                                                     completion_window="24h", metadata={TAG_KEY: tag})
        except openai.OpenAIError as exc:
            if is_transient(exc):
                raise CreateUnknown(fault_name(exc)) from None
            raise BatchRefused(self._refusal("create a batch", exc)) from None
        return made.id

    async def find(self, tag: str, since: float) -> str | None:
        """The batch created with `tag` at or after `since` (a Unix time), or None."""
        async def look() -> str | None:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(TAG_KEY) == tag:
                    return batch.id
                if batch.created_at < since:
                    return None  # newest first: older ones cannot be ours
            return None
        return await self._call("list batches", look)

    async def poll(self, batch_id: str) -> BatchStatus:
        batch = await self._call(f"poll batch {batch_id}", lambda: self._client.batches.retrieve(batch_id))
        errors = [f"{e.code or 'error'}: {e.message or ''}".strip() + (f" (line {e.line})" if e.line else "")
                  for e in ((batch.errors.data or []) if batch.errors else [])]
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        return BatchStatus(batch.status, batch.output_file_id, batch.error_file_id, errors, counts)

    async def download(self, file_id: str) -> list[dict]:
        """The lines of an output or error file (a line that is not JSON is skipped: its request
        then counts as failed in the batch, and is retried as the flags say)."""
        content = await self._call(f"download file {file_id}", lambda: self._client.files.content(file_id))
        lines = []
        for raw in content.content.split(b"\n"):
            try:
                line = json.loads(raw) if raw.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                line = None
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                lines.append(line)
        return lines

    def read_result(self, line: dict, prompt: str = "") -> Completion:
        """One line of an output or error file as a Completion; a failed request has `error` set
        and the fault "batch_failed" (or "batch_expired"), so the engine knows to retry it. A
        reply without usage is counted by our estimates of its prompt and text, as a direct one is."""
        response, error = line.get("response"), line.get("error")
        if isinstance(error, dict):
            return failed_in_batch(f"{error.get('code') or 'error'}: {error.get('message') or ''}",
                                   expired=error.get("code") == "batch_expired")
        if not isinstance(response, dict):
            return failed_in_batch("the line holds neither a response nor an error")
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            said = body.get("error", {}).get("message", "") if isinstance(body, dict) and isinstance(body.get("error"), dict) else ""
            return failed_in_batch(f"{status}: {said}".strip())
        try:
            text, finish_reason = _read_reply(body, self.api == "chat")
        except Exception as exc:  # the reply's shape is wrong: a failed request, as a direct one would be
            return failed_in_batch(f"{fault_name(exc)}: {exc}")
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return Completion(text, finish_reason=finish_reason, prompt_tokens=estimate_tokens(prompt),
                              completion_tokens=estimate_tokens(text))
        return Completion(text, finish_reason=finish_reason, prompt_tokens=_token_count(usage, "prompt_tokens"),
                          completion_tokens=_token_count(usage, "completion_tokens"))

    def prompt_of(self, line: dict) -> str:
        """The prompt of a request line (as request_line wrote it)."""
        body = line.get("body") or {}
        return body["messages"][-1]["content"] if self.api == "chat" else body.get("prompt", "")

    async def aclose(self) -> None:
        await self._client.close()

    # -- faults ----------------------------------------------------------------------------

    async def _call(self, what: str, call):
        """A call that may be repeated: transient faults are retried with doubling waits, a
        refusal stops the run with one line."""
        for attempt in range(1, CALL_TRIES + 1):
            try:
                return await call()
            except openai.OpenAIError as exc:
                if not is_transient(exc):
                    raise BatchRefused(self._refusal(what, exc)) from None
                if attempt == CALL_TRIES:
                    raise TeacherError(f"could not {what} at {self.where} after {CALL_TRIES} tries "
                                       f"({fault_name(exc)}); rerun the same command to go on") from None
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1) + self._jitter.uniform(0, self._backoff))
        raise AssertionError("unreachable")

    def _refusal(self, what: str, exc: openai.OpenAIError) -> str:
        status = getattr(exc, "status_code", None)
        said = " ".join(redact(str(getattr(exc, "message", exc))).split())[:200]
        hint = ("; this server may not offer the Batch API: run without --batch"
                if status in (404, 405, 501) else "")
        return f"the server at {self.where} refused to {what} ({status or fault_name(exc)}: {said}){hint}"


def failed_in_batch(why: str, expired: bool = False) -> Completion:
    """A request the batch did not answer, marked so that the engine sends it again."""
    return Completion("", finish_reason="error", error=redact(f"batch: {why}")[:200],
                      faults=("batch_expired" if expired else "batch_failed",))


def is_failed_in_batch(completion: Completion) -> bool:
    return bool(completion.faults) and completion.faults[-1] in ("batch_failed", "batch_expired")
