"""The fake OpenAI server of fake_openai.py, also speaking the Batch API on the same real HTTP
server: `POST /v1/files` (multipart, purpose "batch"), `GET /v1/files/{id}/content`,
`POST /v1/batches`, `GET /v1/batches/{id}` and `GET /v1/batches` (newest first, with metadata).

A batch is "validating" when made, "in_progress" at its first poll, and ends at the poll after
`polls_to_finish` polls unless `hold` is set (a test kills a client meanwhile). Its requests are
answered as the plain requests of the same server are (`reply_text`, `reply_fn`), with usage.
How each batch ends is scripted in `batch_plan`, one word a batch, then "completed":
- "completed": every request answered in the output file;
- "partial": every second request answered with a 500 in the error file;
- "expired": the first half answered, the rest in the error file as "batch_expired";
- "failed": the batch fails validation: no file at all, the reason in `errors`.
`create_faults` scripts the create calls: "lost" makes the batch and answers 500 (a reply lost
on its way back). `offers_batches = False` answers 404 to every files and batches call, as a
server without the Batch API does; `lists_batches = False` only to the list of batches.
`poll_faults` scripts the polls: "404" answers one with a 404 (the batch's status refused). `creations` counts the batches made; `batch_requests` holds every request
line a batch answered.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs, urlparse

from fake_openai import FakeOpenAI, _Handler


class FakeBatches(FakeOpenAI):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.RequestHandlerClass = _BatchHandler
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_plan: list[str] = []
        self.create_faults: list[str] = []
        self.polls_to_finish = 1
        self.hold = False
        self.offers_batches = self.lists_batches = True
        self.poll_faults: list[str] = []
        self.creations = 0
        self.uploads = 0
        self.batch_requests: list[dict] = []
        self.ids = itertools.count(1)
        self.batch_lock = threading.Lock()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):04d}"

    def create(self, body: dict) -> dict:
        with self.batch_lock:
            batch_id = self.new_id("batch_")
            plan = self.batch_plan.pop(0) if self.batch_plan else "completed"
            lines = [json.loads(x) for x in self.files[body["input_file_id"]].decode().splitlines() if x.strip()]
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"], "status": "validating", "created_at": int(time.time()),
                "metadata": body.get("metadata"), "output_file_id": None, "error_file_id": None, "errors": None,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "_plan": plan, "_lines": lines, "_polls": 0}
            self.creations += 1
            return self.batches[batch_id]

    def poll(self, batch_id: str) -> dict | None:
        with self.batch_lock:
            batch = self.batches.get(batch_id)
            if batch is None or batch["status"] not in ("validating", "in_progress"):
                return batch
            batch["_polls"] += 1
            batch["status"] = "in_progress"
            if batch["_polls"] > self.polls_to_finish and not self.hold:
                self._finish(batch)
            return batch

    def _finish(self, batch: dict) -> None:
        plan, lines = batch["_plan"], batch["_lines"]
        if plan == "failed":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the input file could not be read", "line": 1, "param": None}]})
            return
        output, errors = [], []
        for i, line in enumerate(lines):
            if plan == "partial" and i % 2 == 1:
                errors.append({"id": f"req_{i}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": f"r{i}", "body": {"error": {"message": "server error"}}}})
            elif plan == "expired" and i >= len(lines) // 2:
                errors.append({"id": f"req_{i}", "custom_id": line["custom_id"], "response": None, "error": {
                    "code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
            else:
                output.append({"id": f"req_{i}", "custom_id": line["custom_id"], "error": None,
                               "response": {"status_code": 200, "request_id": f"r{i}", "body": self.answer(line)}})
        for name, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = self.new_id("file-")
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}
        batch["status"] = "expired" if plan == "expired" else "completed"

    def answer(self, line: dict) -> dict:
        body = line["body"]
        chat = line["url"].endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        self.batch_requests.append(line)
        text = self.reply_text(prompt, body)
        if chat and not self.raw_chat and text:
            m = re.search(r"(\d+)\. Instruction:\s*$", prompt)
            text = f"{m.group(1) if m else 4}. Instruction:{text}"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt.split()) + len(text.split())}
        return _Handler._completion(body, text, "stop", chat, usage)


def public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


class _BatchHandler(_Handler):
    server: FakeBatches

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = url.path.rstrip("/")
        if not re.search(r"/(files|batches)(/|$)", path):
            return super().do_GET()
        if not self._authorized():
            return
        server = self.server
        if not server.offers_batches or (path.endswith("/batches") and not server.lists_batches):
            return self._json(404, {"error": {"message": f"Invalid URL (GET {path})"}})
        if m := re.search(r"/files/([^/]+)/content$", path):
            data = server.files.get(m.group(1))
            if data is None:
                return self._json(404, {"error": {"message": "No such file"}})
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        if m := re.search(r"/batches/([^/]+)$", path):
            with server.batch_lock:
                fault = server.poll_faults.pop(0) if server.poll_faults else "ok"
            if fault == "404":
                return self._json(404, {"error": {"message": f"No batch found with id '{m.group(1)}'."}})
            batch = server.poll(m.group(1))
            return self._json(200, public(batch)) if batch else self._json(404, {"error": {"message": "No such batch"}})
        if path.endswith("/batches"):
            limit = int(parse_qs(url.query).get("limit", ["20"])[0])
            with server.batch_lock:
                newest = sorted(server.batches.values(), key=lambda b: b["id"], reverse=True)
            after = parse_qs(url.query).get("after", [None])[0]
            if after:
                newest = [b for b in newest if b["id"] < after]
            page = [public(b) for b in newest[:limit]]
            return self._json(200, {"object": "list", "data": page, "has_more": len(newest) > limit,
                                    "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})
        self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        path = urlparse(self.path).path.rstrip("/")
        if not (path.endswith("/files") or path.endswith("/batches")):
            return super().do_POST()
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorized():
            return
        server = self.server
        if not server.offers_batches:
            return self._json(404, {"error": {"message": f"Invalid URL (POST {path})"}})
        if path.endswith("/files"):
            form = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data)
            parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in form.iter_parts()}
            if parts.get("purpose") != b"batch" or "file" not in parts:
                return self._json(400, {"error": {"message": "purpose must be batch, with a file"}})
            with server.batch_lock:
                file_id = server.new_id("file-")
                server.files[file_id] = parts["file"]
                server.uploads += 1
            return self._json(200, {"id": file_id, "object": "file", "bytes": len(parts["file"]), "created_at": int(time.time()),
                                    "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})
        body = json.loads(data)
        if body.get("completion_window") != "24h" or body.get("input_file_id") not in server.files:
            return self._json(400, {"error": {"message": "a batch needs an uploaded input_file_id and completion_window 24h"}})
        batch = server.create(body)
        with server.batch_lock:
            fault = server.create_faults.pop(0) if server.create_faults else "ok"
        if fault == "lost":
            return self._json(500, {"error": {"message": "upstream timed out"}})
        self._json(200, public(batch))


def verdicts(prompt: str, body: dict) -> str:
    """A rater for the batch tests: each record of a score prompt gets 4, its reason naming its task word."""
    words = re.findall(r'"instruction": "Task number (\w+)\."', prompt)
    return json.dumps([{"index": i, "score": 4, "reason": f"{w} judged"} for i, w in enumerate(words, 1)])
