"""Keep the best records of a dataset under a budget: ``python -m self_instruct.select INPUT OUTPUT``.

    python -m self_instruct.select data.json best.json --by ifd --keep_fraction 0.1
    python -m self_instruct.select scored.json best.json --by judge --keep 1000 --diversity 0.9

``--by ifd`` scores each record with the IFD ratio (:mod:`self_instruct.selection.ifd`) from a
small causal model (the embedded SmolLM2 GGUF by default, or ``--model`` a GGUF file or a
transformers directory), drops records whose IFD is at least ``--max_ifd`` (1: the instruction
does not help), and ranks the rest highest first, as Superfiltering's ``select_data.py`` does.
Scores are cached in ``--cache`` a batch at a time, so a killed or repeated selection resumes
without computing anything twice. ``--by judge`` ranks by ``metadata.score`` as
``python -m self_instruct.score`` writes it. ``--diversity T`` walks the ranking and skips a
record whose embedding's cosine similarity to one already kept is above T (Deita).

OUTPUT gets the kept records in input order, each as it came plus a ``selection`` entry (the
score, its rank, and for IFD both perplexities); ``--dropped`` gets the others with the reason;
``--report`` a page of the funnel. Every file is written at the end, whole, or not at all.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .errors import ConfigError, DataError
from .io.datasets import check_outputs, write_dataset
from .io.jsonl import iter_records, type_name, write_jsonl_atomic, write_text_atomic
from .io.secrets import redact
from .options import command, one_of, option, optional_positive_int, positive_int, positive_number, validate
from .selection.pick import Verdict, budget, rank, walk

KEY = "selection"  # the key every output record gets (written last); an input's own is refused


def optional_cosine(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1):
        raise ConfigError(f"--{name} must be a cosine similarity from -1 to 1 (got {value!r})")


def optional_open_fraction(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise ConfigError(f"--{name} must be in (0, 1] (got {value!r})")


@dataclass(kw_only=True)
class SelectConfig:
    """Every setting of a selection: its flags, and the library's keywords."""

    input: str = option("", "the dataset: a JSON list or JSONL of records with an instruction", positional=True)
    output: str = option("", "the kept records: a JSON list, or JSONL by its suffix", positional=True)
    by: str = option("ifd", "ifd (a small model's instruction-following difficulty) or judge (metadata.score "
                            "from the score command)", check=one_of("ifd", "judge"))
    keep: int | None = option(None, "keep this many records (or --keep_fraction)", check=optional_positive_int)
    keep_fraction: float | None = option(None, "keep this fraction of the records read, rounded down",
                                         check=optional_open_fraction)
    diversity: float | None = option(None, "skip a record whose embedding has a cosine similarity above this to "
                                           "one already kept (Deita uses 0.9)", check=optional_cosine)
    embedder: str | None = option(None, "with --diversity: a sentence-transformers directory or openai:MODEL@BASE_URL "
                                        "(default all-MiniLM-L6-v2 from the [eval] extra)")
    model: str | None = option(None, "with --by ifd: a .gguf file or a transformers model directory "
                                     "(default the embedded SmolLM2-135M-Instruct)")
    max_ifd: float = option(1.0, "with --by ifd: drop records whose IFD is at least this (1: the instruction "
                                 "does not help)", check=positive_number)
    max_length: int = option(1024, "with --by ifd: tokens of instruction and answer at most (longer ones are cut)",
                             check=positive_int)
    batch_size: int = option(8, "with --by ifd: records scored at once, and cached together", check=positive_int)
    threads: int | None = option(None, "with a .gguf model: CPU threads (default every core this process may use)",
                                 check=optional_positive_int)
    unscored: str = option("drop", "with --by judge: drop records without metadata.score, or rank them last",
                           check=one_of("drop", "last"))
    cache: str | None = option(None, "with --by ifd: the score cache (default OUTPUT's name + .ifd-cache.jsonl)")
    dropped: str | None = option(None, "the dropped records and why (default OUTPUT's name + .dropped.jsonl)")
    report: str | None = option(None, "the funnel page (default OUTPUT's name + .report.html)")
    quiet: bool = option(False, "no progress bar", record=False)

    def path(self, given: str | None, suffix: str) -> Path:
        out = Path(self.output)
        return Path(given) if given else out.with_name(out.name.removesuffix(out.suffix) + suffix)

    def validate(self) -> None:
        if not self.input or not self.output:
            raise ConfigError("give the dataset and where to write: python -m self_instruct.select INPUT OUTPUT --keep N")
        validate(self)
        if (self.keep is None) == (self.keep_fraction is None):
            raise ConfigError("give one budget: --keep N or --keep_fraction F")
        for flag in ("model", "cache", "threads"):
            if self.by != "ifd" and getattr(self, flag) is not None:
                raise ConfigError(f"--{flag} is for --by ifd; drop it or pass --by ifd")
        if self.embedder is not None and self.diversity is None:
            raise ConfigError("--embedder is for --diversity; pass --diversity T too")
        files = [("OUTPUT", self.output), ("--dropped", self.path(self.dropped, ".dropped.jsonl")),
                 ("--report", self.path(self.report, ".report.html"))]
        if self.by == "ifd":
            files.append(("--cache", self.path(self.cache, ".ifd-cache.jsonl")))
        check_outputs(files, inputs=[("INPUT", self.input)])


@dataclass
class SelectResult:
    output: Path
    read: int
    kept: list[dict]
    dropped: list[dict]
    steps: list[tuple[str, int]]
    report: Path | None


def read_records(cfg: SelectConfig) -> list[dict]:
    """Every record, checked before any work: one line naming file:line and field for a bad one."""
    records = []
    for line, record in iter_records(cfg.input):
        problem = record_problem(record, cfg.by)
        if problem:
            raise DataError(f"{cfg.input}:{line}: {problem}")
        records.append(record)
    return records


def record_problem(record: dict, by: str) -> str | None:
    """What keeps a record from being selected, or None.

    >>> record_problem({"instruction": "Hi", "output": 3}, "ifd")
    'field "output" must be a string (got number)'
    >>> record_problem({"instruction": "Hi", "metadata": {"score": "high"}}, "judge")
    'field "metadata.score" must be a number (got string)'
    """
    def wrong(name: str, value, kind: str) -> str:
        return f'field "{name}" must be {kind} (got {type_name(value)})'

    if not isinstance(record.get("instruction"), str):
        return 'field "instruction" is missing' if "instruction" not in record else wrong("instruction", record["instruction"], "a string")
    for name in ("input", "output"):
        if record.get(name) is not None and not isinstance(record[name], str):
            return wrong(name, record[name], "a string")
    if by == "ifd" and not isinstance(record.get("output"), str):
        return 'field "output" is missing: IFD scores the answer'
    meta = record.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        return wrong("metadata", meta, "an object")
    score = (meta or {}).get("score")
    if by == "judge" and score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        return wrong("metadata.score", score, "a number")
    own = record.get(KEY)
    if own is not None and not (isinstance(own, dict) and "by" in own):
        return f'field "{KEY}" is taken by the input; select writes its scores there: rename the field'
    return None


def ifd_scores_of(records: list[dict], cfg: SelectConfig) -> tuple[list[float | None], list[dict]]:
    """Each record's IFD (None without an answer token) and what to record of it."""
    from tqdm import tqdm

    from .selection.ifd import IFDCache, ifd_scores, ifd_texts, open_scorer

    scorer = open_scorer(cfg.model, cfg.max_length, cfg.threads)
    cache = IFDCache(cfg.path(cfg.cache, ".ifd-cache.jsonl"), scorer.model_id, scorer.max_length)
    texts = [ifd_texts(r["instruction"], r.get("input") or "", r["output"]) for r in records]
    with tqdm(total=len(records), desc="ifd", unit="rec", file=sys.stderr, disable=cfg.quiet) as bar:
        results = ifd_scores(texts, scorer, cache, cfg.batch_size, bar.update)
    return ([r.ifd if r else None for r in results],
            [{"model": scorer.model_id, **{k: v for k, v in r.to_dict().items() if k != "ifd"}} if r
             else {"model": scorer.model_id} for r in results])


def select(cfg: SelectConfig) -> SelectResult:
    """Select from cfg.input into cfg.output (and the dropped file and report); see the module docstring."""
    cfg.validate()
    records = read_records(cfg)
    verdicts = [Verdict() for _ in records]
    steps = [("read", len(records))]
    if cfg.by == "ifd":
        scores, details = ifd_scores_of(records, cfg)
        for i, s in enumerate(scores):
            if s is None:
                verdicts[i] = Verdict(reason="no_answer", detail="the answer has no token to score")
            elif s >= cfg.max_ifd:
                verdicts[i] = Verdict(reason="ifd_too_high", detail=f"IFD {s:.4f} >= {cfg.max_ifd}: the instruction "
                                                                    "does not help the model predict the answer")
        steps.append(("scored", sum(s is not None for s in scores)))
        ranked_scores = [s if s is not None and s < cfg.max_ifd else None for s in scores]
        order = rank(ranked_scores)
        steps.append((f"IFD under {cfg.max_ifd}", len(order)))
    else:
        scores = [(r.get("metadata") or {}).get("score") for r in records]
        details = [{} for _ in records]
        unscored = [i for i, s in enumerate(scores) if s is None]
        if cfg.unscored == "drop":
            for i in unscored:
                verdicts[i] = Verdict(reason="unscored", detail="no metadata.score (rate it with python -m self_instruct.score)")
        order = rank(scores, last=unscored if cfg.unscored == "last" else ())
        steps.append(("scored" + (" (unscored ranked last)" if cfg.unscored == "last" else ""), len(order)))
    limit = budget(len(records), cfg.keep, cfg.keep_fraction)
    embed = embedding_of(records, cfg) if cfg.diversity is not None else None
    walk(order, limit, verdicts, embed=embed, threshold=cfg.diversity)
    if embed:
        similar = sum(1 for v in verdicts if v.reason == "too_similar")
        steps.append((f"not too similar (cosine <= {cfg.diversity})", len(order) - similar))
    steps.append(("kept", sum(v.rank is not None for v in verdicts)))
    kept, dropped = [], []
    for i, (record, v) in enumerate(zip(records, verdicts)):
        entry = {"by": cfg.by, "score": scores[i], **details[i]}
        if v.rank is not None:
            kept.append(with_selection(record, {**entry, "rank": v.rank}))
        else:
            # the kept record it resembles, by its instruction (indices mean nothing outside this run)
            extra = {k: (records[val]["instruction"] if k == "similar_to" else val) for k, val in v.extra.items()}
            dropped.append(with_selection(record, {**entry, "dropped": v.reason, "detail": v.detail, **extra}))
    report = write_outputs(cfg, kept, dropped, steps)
    return SelectResult(Path(cfg.output), len(records), kept, dropped, steps, report)


def with_selection(record: dict, entry: dict) -> dict:
    """The record as it came, with `selection` (replacing a previous select's) as its last key."""
    out = {k: v for k, v in record.items() if k != KEY}
    out[KEY] = entry
    return out


def embedding_of(records: list[dict], cfg: SelectConfig):
    """indices -> embeddings of those records' instruction, input and output, by --embedder."""
    from .evaluation.retrieval import make_embedder

    embedder = make_embedder(cfg.embedder)

    def embed(indices: list[int]):
        return embedder.embed([record_text(records[i]) for i in indices])
    return embed


def record_text(record: dict) -> str:
    """What a record's embedding is made of: its instruction, input and output, a line apart.

    >>> record_text({"instruction": "Add 2 and 3.", "input": "", "output": "5"})
    'Add 2 and 3.\\n5'
    """
    return "\n".join(t for t in (record["instruction"], record.get("input") or "", record.get("output") or "") if t)


def write_outputs(cfg: SelectConfig, kept: list[dict], dropped: list[dict], steps) -> Path | None:
    """OUTPUT and --dropped, then the report (a missing matplotlib is a note, not a failure)."""
    report = None
    page = None
    try:
        from .reporting.selection import Funnel, render_selection

        ranked = sorted(kept, key=lambda r: r[KEY]["rank"])
        page = render_selection(Funnel(
            cfg.input, cfg.by, steps, [r[KEY]["score"] for r in kept if r[KEY]["score"] is not None],
            [r[KEY]["score"] for r in dropped if r[KEY]["score"] is not None], ranked, dropped,
            settings={k: v for k, v in vars(cfg).items() if v is not None and k not in ("quiet",)}))
    except (ConfigError, ImportError) as exc:
        print(f"self_instruct: no report ({redact(str(exc))})", file=sys.stderr)
    write_dataset(cfg.output, kept)
    write_jsonl_atomic(cfg.path(cfg.dropped, ".dropped.jsonl"), dropped)
    if page is not None:
        report = cfg.path(cfg.report, ".report.html")
        write_text_atomic(report, page)
    return report


def select_file(input: str, output: str, **options) -> SelectResult:
    """Library entry point: `select_file("pool.json", "best.json", by="ifd", keep_fraction=0.1)`."""
    return select(SelectConfig(input=str(input), output=str(output), **options))


def run_command(cfg: SelectConfig) -> None:
    result = select(cfg)
    reasons: dict[str, int] = {}
    for r in result.dropped:
        reasons[r[KEY]["dropped"]] = reasons.get(r[KEY]["dropped"], 0) + 1
    why = ", ".join(f"{k} {n}" for k, n in reasons.items()) or "none"
    where = f"; report in {result.report}" if result.report else ""
    print(f"self_instruct: kept {len(result.kept)} of {result.read} records by {cfg.by} in {result.output} "
          f"(dropped: {why}, in {cfg.path(cfg.dropped, '.dropped.jsonl')}){where}", file=sys.stderr)


main = command(SelectConfig, run_command, """Keep the best records of INPUT under a budget, by IFD or a judge's score, optionally diverse.

--by ifd scores each record with a small local model (the instruction-following difficulty:
perplexity of the answer with the instruction over without; records at or above --max_ifd are
dropped, the highest of the rest kept); --by judge ranks by metadata.score from the score command.
--diversity skips records too similar to one already kept. OUTPUT gets the kept records with a
"selection" entry; the dropped ones go to --dropped with the reason; --report draws the funnel.
""")


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.select",
                 interrupted="interrupted; the scores computed so far are cached, rerun the same command to resume")


if __name__ == "__main__":
    cli()
