"""What a run shows while it goes and says when it ends: the counters behind the progress bar,
state.json and the summary line, and the advice when units keep nothing."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SelfInstructError
from .ledger import Ledger
from .prices import format_cost


class StallError(SelfInstructError):
    """Units in a row that kept nothing: the template or the model is wrong, not the luck."""

    exit_code = 1


@dataclass
class Stats:
    """What a run did, for the progress bar, the summary and state.json (spending comes from the ledger)."""

    ledger: Ledger
    units: int = 0
    parsed: int = 0      # candidates judged
    unjudged: int = 0    # candidates past the target, left unjudged
    kept: int = 0
    cached: int = 0      # replies answered from responses.jsonl, not sent
    rejects: Counter = field(default_factory=Counter)
    endpoints: Callable[[], dict] = dict  # a fleet teacher's per-server counts

    @property
    def requests(self) -> int:
        return self.ledger.spend.requests

    @property
    def failed_requests(self) -> int:
        return self.ledger.spend.failed

    @property
    def prompt_tokens(self) -> int:
        return self.ledger.spend.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.ledger.spend.completion_tokens

    @property
    def tokens(self) -> int:
        return self.ledger.spend.tokens

    @property
    def cost(self) -> float | None:
        return self.ledger.spend.cost if self.ledger.price else None

    @property
    def faults(self) -> Counter:
        return self.ledger.spend.faults

    def summary(self) -> str:
        rejects = ", ".join(f"{k} {v}" for k, v in self.rejects.most_common()) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in self.faults.most_common()) or "none"
        rate = f"{self.kept / self.parsed:.0%}" if self.parsed else "n/a"
        cost = f"; cost {format_cost(self.cost)}" if self.cost is not None else ""
        unjudged = f", {self.unjudged} left unjudged at the target" if self.unjudged else ""
        servers = ""
        endpoints = self.endpoints()
        if len(endpoints) > 1:
            servers = "; endpoints: " + ", ".join(
                f"{url} {s['requests']} requests ({s['failures']} failed, benched {s['benched']})"
                for url, s in endpoints.items())
        return (f"kept {self.kept} of {self.parsed} judged ({rate}{unjudged}) from {self.requests} requests "
                f"({self.failed_requests} failed); tokens {self.prompt_tokens} prompt + {self.completion_tokens} "
                f"completion{cost}; rejected: {rejects}; faults met: {faults}{servers}")

    def postfix(self, concurrency: int | None) -> str:
        """The progress bar's tail: the top reasons for rejects, requests out now, tokens used,
        cost, concurrency now. Tokens are those replies reported used, never the reservations of
        requests out (each later replaced by its smaller actual use), so the figure never goes down."""
        spend = self.ledger.spend
        rejects = " ".join(f"{k}={v}" for k, v in self.rejects.most_common(4))
        cost = f" | {format_cost(spend.cost)}" if self.ledger.price else ""
        slots = f" | conc {concurrency}" if concurrency is not None else ""
        used = spend.prompt_tokens + spend.completion_tokens
        return f"rej {rejects or 0} | out {len(self.ledger.in_flight)} | tok {used / 1000:.1f}k{cost}{slots}"

    def to_state(self, extra: dict | None = None) -> dict:
        spend = self.ledger.spend
        endpoints = self.endpoints()
        return {
            "units": self.units, "requests": spend.requests, "failed_requests": spend.failed,
            "prompt_tokens": spend.prompt_tokens, "completion_tokens": spend.completion_tokens,
            "reserved_tokens": spend.reserved_tokens, "cost": None if self.cost is None else round(self.cost, 6),
            "parsed": self.parsed, "kept": self.kept, "unjudged": self.unjudged, "cached_replies": self.cached,
            "rejects": dict(self.rejects), "faults": dict(spend.faults),
            **({"endpoints": endpoints} if endpoints else {}), **(extra or {}),
        }


def stall_message(units: str, reasons: Counter, last_error: str) -> str:
    """Why `units` (e.g. "10 rounds") in a row kept nothing, and what to do about it."""
    head = f"stopped: {units} in a row kept no instruction"
    if set(reasons) == {"request_failed"}:
        return (f"{head}: every request failed (last: {last_error}); the teacher is down, overloaded or "
                f"refusing these requests: check it, then rerun the same command to resume")
    seen = ", ".join(f"{k} {v}" for k, v in reasons.most_common(3)) or "nothing in the replies"
    if reasons and reasons.most_common(1)[0][0] in ("similar", "duplicate"):
        fix = "the teacher keeps repeating known tasks: raise --temperature, add seed tasks or use another --model_name"
    else:
        fix = ("the replies do not follow the format asked for: check the template (--prompt_path, see one "
               "prompt with --dry_run) and the model (--model_name)")
    return f"{head} (rejected: {seen}); {fix}, then rerun the same command to resume"
