"""Rate existing records with the teacher (AlpaGasus-style filtering), as an engine pipeline.

Units are batches of `records_per_request` records in input order; a batch is one request at
temperature 0 whose prompt depends only on the records and the rubric, so the engine's reply cache
and resume make a rerun free. The reply is one JSON array of verdicts keyed by 1-based index:

    parse_scores('Sure!\\n```json\\n[{"index": 1, "score": 4, "reason": "ok"}]\\n```', 1)
    # -> [(4, "ok")]
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..core.replies import reply_list
from ..core.templates import fill
from ..io.jsonl import append_jsonl, iter_jsonl, repair_torn_tail
from ..types import Decoding, Example, Rejection
from .base import Ask, Pipeline, UnitResult

SCORE_RANGE = (1.0, 5.0)


def score_prompt(examples: Sequence[Example], rubric: str) -> str:
    """The same records and rubric always make the same prompt (the reply cache keys on it)."""
    blocks = []
    for i, ex in enumerate(examples, 1):
        fields = {"instruction": ex.instruction, "input": ex.input, "response": ex.output}
        blocks.append(f"### Record {i}\n" + json.dumps(fields, ensure_ascii=False, indent=1))
    return fill(rubric, records="\n\n".join(blocks))


def _score_of(item: Any, scale: tuple[float, float] = SCORE_RANGE) -> tuple[float, str] | None:
    if not isinstance(item, dict):
        return None
    score = item.get("score")
    if isinstance(score, str):
        try:
            score = float(score.strip())
        except ValueError:
            return None
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return None
    if not scale[0] <= score <= scale[1]:
        return None
    return (int(score) if float(score).is_integer() else float(score)), str(item.get("reason", "")).strip()


def parse_scores(text: str, count: int, scale: tuple[float, float] = SCORE_RANGE) -> list[tuple[float, str] | None]:
    """(score, reason) per record, None where the reply has no valid score for it. Verdicts are
    matched by their "index" (1-based), else by position; a lone object answers a batch of one,
    and objects one after another (an array cut off by max_tokens) answer in order."""
    verdicts: list[tuple[float, str] | None] = [None] * count
    for position, item in enumerate(reply_list(text, (dict,), lambda d: "score" in d)):
        index = item.get("index") if isinstance(item, dict) else None
        slot = index - 1 if isinstance(index, int) and not isinstance(index, bool) and 1 <= index <= count else position
        if slot < count and verdicts[slot] is None:
            verdicts[slot] = _score_of(item, scale)
    return verdicts


class VerdictCache:
    """Verdicts already given, keyed by sha256 of (model, rubric, record): a record scored once under
    a rubric is never sent again, even after --overwrite or in a grown input (verdicts.jsonl)."""

    def __init__(self, path: Path, model: str, rubric: str):
        self.path, self.salt = Path(path), json.dumps([model, rubric])
        self.known = {}
        if self.path.exists():
            repair_torn_tail(self.path)  # a kill mid-append leaves half a line; its verdict is asked again
            self.known = {r["key"]: (r["score"], r["reason"]) for _, r in iter_jsonl(self.path)}

    def key(self, ex: Example) -> str:
        payload = json.dumps([self.salt, ex.instruction, ex.input, ex.output], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, ex: Example) -> tuple[float, str] | None:
        return self.known.get(self.key(ex))

    def put(self, pairs: Sequence[tuple[Example, tuple[float, str]]]) -> None:
        rows = [{"key": self.key(ex), "score": v[0], "reason": v[1]} for ex, v in pairs]
        self.known.update((r["key"], (r["score"], r["reason"])) for r in rows)
        append_jsonl(self.path, rows, fsync=False)


@dataclass(frozen=True)
class RecordBatch:
    index: int
    examples: tuple[Example, ...]
    requests: int = 1


class ScorePipeline(Pipeline):
    """Scores records in batches; keeps those at or above `min_score` (None keeps every scored one)."""

    name = "score"
    unit_name = "batch"

    def __init__(self, examples: Sequence[Example], rubric: str, *, records_per_request: int = 5,
                 min_score: float | None = None, max_tokens: int = 64, cache: VerdictCache | None = None):
        self.examples, self.rubric, self.cache = list(examples), rubric, cache
        self.size, self.min_score, self.max_tokens = records_per_request, min_score, max_tokens

    @property
    def unit_count(self) -> int:
        return -(-len(self.examples) // self.size)

    def unit(self, index: int, pool: Any = None) -> RecordBatch | None:
        if index >= self.unit_count:
            return None
        return RecordBatch(index, tuple(self.examples[index * self.size:(index + 1) * self.size]))

    def decoding(self, count: int) -> Decoding:
        """Greedy (the same reply again), room for `count` one-line verdicts."""
        return Decoding(max_tokens=self.max_tokens * count + 16, temperature=0.0)

    async def verdicts(self, examples: Sequence[Example], ask: Ask) -> tuple[list, str, str | None]:
        """A verdict (or None) per example, asking only about those the cache does not know; the
        reply text; and the request's error, if it failed."""
        known = [self.cache.get(ex) if self.cache else None for ex in examples]
        todo = [ex for ex, v in zip(examples, known) if v is None]
        if not todo:
            return known, "", None
        completion = await ask(score_prompt(todo, self.rubric), self.decoding(len(todo)))
        if not completion.ok:
            return known, "", completion.error or "request failed"
        fresh = iter(parse_scores(completion.text, len(todo)))
        verdicts = [v if v is not None else next(fresh) for v in known]
        if self.cache:
            self.cache.put([(ex, v) for ex, v, old in zip(examples, verdicts, known) if old is None and v is not None])
        return verdicts, completion.text, None

    async def run_unit(self, batch: RecordBatch, ask: Ask) -> UnitResult:
        verdicts, reply, error = await self.verdicts(batch.examples, ask)
        kept, rejections = [], []
        for ex, verdict in zip(batch.examples, verdicts):
            if verdict is None and error is not None:
                rejections.append(Rejection("request_failed", ex, detail=error))
                continue
            if verdict is None:
                rejections.append(Rejection("unscored", ex, raw=reply[:2000],
                                            detail="no score from 1 to 5 for this record in the reply"))
                continue
            scored = Example(ex.instruction, ex.input, ex.output, {**ex.metadata, "score": verdict[0], "score_reason": verdict[1]})
            if self.min_score is not None and verdict[0] < self.min_score:
                rejections.append(Rejection("low_score", scored, detail=f"{verdict[0]} < {self.min_score}: {verdict[1]}"))
            else:
                kept.append(scored)
        return UnitResult(kept, rejections)


class KeepAll:
    """The judge for scoring: existing data is rated, never deduplicated (self_instruct.dedup does that)."""

    @staticmethod
    def judge_many(examples, limit: int | None = None) -> list[dict | None]:
        records = [{"instruction": example.instruction, "input": example.input, "output": example.output,
                    "metadata": dict(example.metadata)} for example in examples]
        return records if limit is None else records[:limit] + [None] * (len(records) - limit)


keep_all = KeepAll()