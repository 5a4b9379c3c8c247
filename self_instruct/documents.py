"""Turn documents (books, PDFs, web pages, transcripts) into instruction data.

    python -m self_instruct.documents book.pdf notes/ --mode qa --output_dir out \\
        --base_url http://127.0.0.1:8000/v1 --model_name my-model

The files are read and cut into chunks (self_instruct.sources), each chunk is one unit of the
engine, and the documents pipeline says what to ask of it (self_instruct.pipelines.documents).
The engine is the self-instruct loop's: the same concurrency, budgets, reply cache, filters,
exact and ROUGE-L dedup, locked pool, resume and output files. Each chunk is done exactly once,
in order, across kills and reruns.
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from . import cli as cli_edge
from .core.filters import load_filters
from .core.templates import load_template
from .engine.prices import find_batch_price, format_cost, price_of, prompt_bound
from .engine.run import Outcome, Run, execute, finish, judge_of, say
from .errors import ConfigError
from .executors import EXECUTORS, open_executor, share_env
from .io.jsonl import sha256_of
from .options import (
    BatchOptions,
    BudgetOptions,
    CostOptions,
    JudgeOptions,
    RateOptions,
    RunOptions,
    TeacherOptions,
    command,
    one_of,
    option,
    optional_fraction,
    positive_int,
    positive_number,
    validate,
)
from .pipelines.conversations import ConversationPipeline, TurnTemplates
from .pipelines.documents import (
    MIN_PARAGRAPH_WORDS,
    MODES,
    RETRY_NOTE,
    DocumentSettings,
    DocumentsPipeline,
    verify_prompt,
    window_count,
    window_examples,
)
from .sources.chunking import Chunk, StopSplitting, chunk_document, chunk_documents, token_counter
from .sources.document import DEFAULT_MAX_BYTES, UnreadableFile
from .sources.loaders import Loaded, expand_paths, load_document, load_files
from .teachers.base import Teacher
from .teachers.choose import planned_teacher
from .types import Decoding, Example

# Settings that shape the data: resuming with any of them changed would mix two runs in one pool.
SHAPING = (
    "mode", "model_name", "api", "teacher", "temperature", "top_p", "max_tokens", "chunk_size", "chunk_overlap",
    "tokenizer", "language", "questions_per_chunk", "questions_per_1k_tokens", "open_book", "verify", "window",
    "backtranslate_unit", "min_paragraph_words", "turns", "turn_templates_sha256",
    "similarity_threshold", "decontaminate", "filter", "sources", "template_sha256", "verify_template_sha256",
)
DEFAULT_MAX_TOKENS = 1024
T = TypeVar("T")


@dataclass(kw_only=True)
class DocumentsConfig(RunOptions, JudgeOptions, CostOptions, BatchOptions, BudgetOptions, RateOptions, TeacherOptions):
    """Every setting of a documents run: its flags, and the library's keywords."""

    paths: tuple[str, ...] = option((), "files (.txt .md .pdf .html .epub .docx .srt .vtt) or directories of them",
                                    variadic=True)
    mode: str = option("qa", "qa, instruct, backtranslate, conversations (each qa question grown into --turns turns) "
                             "or windows (no teacher)")
    output_dir: str = option("out", "where generated.jsonl, rejected.jsonl, run.json, state.json and regen.json go")
    chunk_size: int = option(512, "tokens a chunk holds (words, or --tokenizer's tokens)", check=positive_int)
    chunk_overlap: int = option(64, "tokens of whole sentences two chunks share")
    tokenizer: str | None = option(None, "count tokens with 'local', a .gguf file or a local Hugging Face tokenizer "
                                         "(default: words)")
    language: str = option("en", "the documents' language, for sentence splitting")
    max_file_mb: float = option(DEFAULT_MAX_BYTES / 2**20, "skip a file over this many MB, on disk or uncompressed "
                                "(an EPUB or DOCX member, or all it holds), unread", check=positive_number)
    questions_per_chunk: int | None = option(None, "qa: questions asked of each chunk (default by its length)")
    questions_per_1k_tokens: float = option(6.0, "qa and instruct: questions or tasks per 1,000 tokens of a chunk")
    open_book: bool = option(False, "qa: the chunk goes into each record's input")
    turns: int = option(2, "conversations: turns of each conversation (its first question grounded in the chunk)",
                        check=positive_int)
    no_verify: bool = option(False, "qa and instruct: skip the second call that checks each answer against its chunk")
    window: int = option(5, "windows: every n-th sentence is an instruction, the n-1 after it its output")
    backtranslate_unit: str = option("chunk", "backtranslate: chunk, or paragraph (each paragraph an answer)")
    min_paragraph_words: int = option(MIN_PARAGRAPH_WORDS, "backtranslate by paragraph: shorter paragraphs join the next")
    prompt_path: str | None = option(None, "your own template for the mode (see prompts/documents_*.txt)")
    verify_prompt_path: str | None = option(None, "your own grounding-check template (see prompts/documents_verify.txt)")
    temperature: float = option(0.7, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling")
    max_tokens: int | None = option(None, f"tokens a reply may take (default {DEFAULT_MAX_TOKENS})")
    max_stall_chunks: int = option(10, "chunks in a row that keep nothing stop the run with the likely cause",
                                   check=positive_int)
    no_report: bool = option(False, "no report.html at the end", record=False)
    dry_run: bool = option(False, "print the first prompt (stdout) and the most the run can take (stderr); call nothing",
                           record=False)
    # Alpaca's ROUGE-L rule judges made-up instructions: here it runs only when asked for.
    similarity_threshold: float | None = option(
        None, "reject a record whose instruction's ROUGE-L F-measure against any kept one is above this "
              "(default: no similarity check; exact duplicates are always dropped)", check=optional_fraction)
    executor: str = option("local", "where the files are read, cleaned and chunked, and a server's requests sent "
                                    "from: local (this process) or ray (a Ray task a file, Ray workers for the "
                                    "requests; pip install 'self_instruct[ray]'); the judge, budget and pool stay "
                                    "here, and the output is the same", check=one_of(*EXECUTORS), record=False)
    ray_address: str | None = option(None, "the Ray cluster to join with --executor ray (default: RAY_ADDRESS, else "
                                           "a local instance for the reading)", record=False)

    @property
    def verify(self) -> bool:
        return not self.no_verify

    def settings(self) -> DocumentSettings:
        # a conversation starts as a qa pair: its first question, answered and checked against the chunk
        return DocumentSettings(mode="qa" if self.mode == "conversations" else self.mode,
                                questions_per_chunk=self.questions_per_chunk,
                                questions_per_1k_tokens=self.questions_per_1k_tokens, open_book=self.open_book,
                                verify=self.verify, window=self.window, backtranslate_unit=self.backtranslate_unit,
                                min_paragraph_words=self.min_paragraph_words, prompt_path=self.prompt_path,
                                verify_prompt_path=self.verify_prompt_path)

    def decoding(self) -> Decoding:
        # JSON mode where the server has it (chat API); the parse stays tolerant of fences and preambles
        return Decoding(max_tokens=self.max_tokens or DEFAULT_MAX_TOKENS, temperature=self.temperature, top_p=self.top_p,
                        json=True)

    def validate(self) -> None:
        if not self.paths:
            raise ConfigError("give one or more files or directories to read: python -m self_instruct.documents PATH... --mode qa")
        validate(self)
        if self.mode not in MODES + ("conversations",):
            raise ConfigError(f"--mode must be one of {', '.join(MODES)} or conversations (got {self.mode!r})")
        if self.mode == "conversations" and self.turns < 2:
            raise ConfigError(f"--turns must be 2 or more with --mode conversations (got {self.turns})")
        self.settings().validate()
        self.decoding()
        load_filters(self.filter)  # every --filter resolves, before anything is written
        if self.ray_address and self.executor != "ray":
            raise ConfigError("--ray_address goes with --executor ray")


# --- reading ---

def read_chunks(cfg: DocumentsConfig, stop: Callable[[], bool] | None = None,
                executor=None) -> tuple[list[Chunk], list[dict]]:
    """The run's chunks (sections in windows mode) and a fingerprint of every file read. Each
    file that cannot be read (or passes --max_file_mb) is one line on stderr and an entry of the
    sources with its reason; none readable at all is an error. `stop`: asked while splitting; when
    it says True the reading ends (StopSplitting). With --executor ray each file is read and
    chunked by a Ray task (`executor`, else one opened for the reading), the results taken in the
    files' order and the chunks numbered here, so they are the ones read here."""
    if cfg.executor == "ray" and executor is None:
        with open_executor("ray", cfg.ray_address) as executor:
            return read_chunks(cfg, stop, executor)
    size = None if cfg.mode == "windows" else cfg.chunk_size
    overlap = 0 if cfg.mode == "windows" else cfg.chunk_overlap
    if cfg.executor == "ray":
        counter = token_counter(cfg.tokenizer)  # a tokenizer that cannot be had fails here, once, not in each task
        loaded, chunks, digests = _read_on(executor, cfg, size, overlap, counter, stop)
    else:
        loaded = load_files(cfg.paths, int(cfg.max_file_mb * 2**20))
    for problem in loaded.problems():
        say(f"skipped {problem}")
    documents = loaded.documents
    if not documents:
        raise ConfigError(f"none of the {len(cfg.paths)} path(s) given holds a readable document")
    if cfg.executor != "ray":
        chunks = chunk_documents(documents, token_counter(cfg.tokenizer), size=size, overlap=overlap,
                                 language=cfg.language, stop=stop)
        digests = [sha256_of(Path(d.path).read_bytes()) for d in documents]
    if not chunks:
        raise ConfigError("the documents given hold no text to make examples from")
    sources = [{"path": d.path, "sha256": digest} for d, digest in zip(documents, digests)]
    sources += [{"path": path, "skipped": why} for path, why in loaded.skipped]
    return chunks, sources


def read_and_chunk(job: tuple) -> tuple:
    """One file read, cleaned and chunked, where a Ray task runs it: (document, chunks numbered
    from 0, sha256 of the file) or (None, why it cannot be read, None)."""
    path, max_bytes, tokenizer, size, overlap, language = job
    try:
        document = load_document(path, max_bytes)
    except UnreadableFile as exc:
        return None, str(exc), None
    chunks = chunk_document(document, token_counter(tokenizer), size, overlap, 0, language)
    return document, chunks, sha256_of(Path(path).read_bytes())


def _read_on(executor, cfg: DocumentsConfig, size: int | None, overlap: int, counter,
             stop: Callable[[], bool] | None) -> tuple[Loaded, list[Chunk], list[str]]:
    chunk_documents([], counter, size=size, overlap=overlap)  # the same one-line errors for the sizes
    files, notes = expand_paths(cfg.paths)
    loaded, chunks, digests = Loaded(notes=notes), [], []
    jobs = [(str(path), int(cfg.max_file_mb * 2**20), cfg.tokenizer, size, overlap, cfg.language) for path in files]
    for path, (document, found, digest) in zip(files, executor.map(read_and_chunk, jobs)):
        if stop is not None and stop():
            raise StopSplitting()
        if document is None:
            loaded.skipped.append((str(path), found))
            continue
        loaded.documents.append(document)
        digests.append(digest)
        chunks += [replace(chunk, index=len(chunks) + k) for k, chunk in enumerate(found)]
    return loaded, chunks, digests


def prepare(cfg: DocumentsConfig, stop: Callable[[], bool] | None = None,
            executor=None) -> tuple[list[Chunk], list[dict], DocumentsPipeline]:
    """Read, split and plan the run: all the work before the first unit, linear in the text."""
    chunks, sources = read_chunks(cfg, stop, executor)
    return chunks, sources, DocumentsPipeline(chunks, cfg.settings(), cfg.decoding())


async def in_worker(work: Callable[[Callable[[], bool]], T]) -> T:
    """`work(stopped)` in a thread of its own, awaited: the event loop stays free to take Ctrl-C
    and SIGTERM while a big book is read and split. When the wait is cancelled it ends at once;
    `stopped()` then says True and the work ends at its next check (splitting checks between
    pieces of a few thousand characters), and a daemon thread never holds up the exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    stop = threading.Event()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return  # the wait was cancelled
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (work(stop.is_set), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which raises it
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    threading.Thread(target=run, name="self_instruct-reading", daemon=True).start()
    try:
        return await done
    finally:
        stop.set()


# --- the run ---

@dataclass
class DocumentsResult(Outcome):
    chunks: int = 0  # units of the run: chunks (sections in windows mode)


async def adocuments(cfg: DocumentsConfig, *, teacher: Teacher | None = None) -> DocumentsResult:
    """Run (or resume) a documents run into cfg.output_dir."""
    cfg.validate()
    # a server's requests go from Ray workers; the embedded model's, and a --batch upload, from here
    requests_on_ray = (cfg.executor == "ray" and teacher is None and not cfg.batch
                       and planned_teacher(cfg)[0] == "openai")
    if requests_on_ray:
        share_env("OPENAI_API_KEY", cfg.api_key)  # before Ray starts: a local instance's workers inherit it
    with open_executor(cfg.executor, cfg.ray_address) as executor:  # joined here, on the main thread
        chunks, sources, pipeline = await in_worker(lambda stop: prepare(cfg, stop, executor))
        if requests_on_ray and pipeline.settings.uses_teacher:  # the requests go from Ray workers too
            from .teachers.ray_teacher import on_ray
            return await _adocuments(cfg, chunks, sources, pipeline, on_ray(cfg), own=True)
    return await _adocuments(cfg, chunks, sources, pipeline, teacher)


async def _adocuments(cfg: DocumentsConfig, chunks: list[Chunk], sources: list[dict], pipeline,
                      teacher: Teacher | None, own: bool = False) -> DocumentsResult:
    """The run once the chunks are read; `own`: the teacher was made here, and closes with the run."""
    settings = pipeline.settings
    out = Path(cfg.output_dir)
    async with Run(cfg, teacher=teacher, asks_teacher=settings.uses_teacher, follows_instructions=True,
                   stages=[out, out / "score"]) as run:
        if own:
            run.adopt(teacher)
        config = run.config(paths=list(cfg.paths), sources=sources, max_tokens=cfg.decoding().max_tokens,
                            verify=pipeline.settings.verifies, template_sha256=sha256_of(pipeline.template),
                            verify_template_sha256=sha256_of(pipeline.verify_template),
                            turn_templates_sha256=TurnTemplates.load(grounded=True).sha256()
                            if cfg.mode == "conversations" else None)
        if settings.mode in ("qa", "instruct") and not settings.verifies:
            _, checks = bounds(pipeline, cfg.decoding().max_tokens,
                               load_template("documents_verify.txt", cfg.verify_prompt_path, "--verify_prompt_path"))
            say(f"--no_verify: no grounding check, which saves up to {checks.describe(run.price)}")
        await run.check()
        with run.open(out, config, SHAPING) as pool:
            judge = judge_of(pool.records, cfg, filter_set=pipeline.filter_set)
            if cfg.mode == "conversations":  # the follow-ups are answered from the chunk too
                pipeline = ConversationPipeline(pipeline, cfg.turns, TurnTemplates.load(grounded=True), cfg.decoding(),
                                                filters=judge.filters, threshold=cfg.similarity_threshold,
                                                context=lambda unit: unit.chunk.text)
            outcome = await run.engine(pool, pipeline, judge, decoding=cfg.decoding(), total_units=pipeline.unit_count,
                                       # a stretch of sections of short sentences may keep nothing, and no teacher is to blame
                                       max_stall_units=cfg.max_stall_chunks if settings.uses_teacher else None)
        if cfg.judge and settings.uses_teacher:
            from .score import judge_run
            await judge_run(run, out)
        return DocumentsResult(**vars(outcome), chunks=len(chunks))


def documents(paths: Sequence[str], output_dir: str = "out", *, teacher: Teacher | None = None,
              **options) -> DocumentsResult:
    """Library entry point: `documents(["book.pdf"], "out", mode="qa", base_url=...)`."""
    cfg = DocumentsConfig(paths=tuple(str(p) for p in paths), output_dir=output_dir, **options)
    return asyncio.run(adocuments(cfg, teacher=teacher))


# --- dry run ---

@dataclass
class Bound:
    """The most some requests can take."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt: str, max_tokens: int, extra_prompt_tokens: int = 0) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_bound(prompt) + extra_prompt_tokens
        self.completion_tokens += max_tokens

    def cost(self, price) -> float:
        return price.cost(self.prompt_tokens, self.completion_tokens)

    def describe(self, price) -> str:
        cost = f", {format_cost(self.cost(price))}" if price is not None else ""
        return f"{self.requests} requests, {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens{cost}"


def bounds(pipeline: DocumentsPipeline, max_tokens: int, verify_template: str) -> tuple[Bound, Bound]:
    """What writing every chunk (each request retried once) and checking every chunk's answers
    can take at most. A check quotes the answers, so its prompt holds at most one reply:
    max_tokens tokens of at most 4 bytes each."""
    writing, checks = Bound(), Bound()
    for index in range(len(pipeline.chunks)):
        unit = pipeline.unit(index)
        for prompt in pipeline.prompts(unit):
            writing.add(prompt, max_tokens)
            writing.add(prompt + RETRY_NOTE, max_tokens)
        blank = [Example("", "", "")] * unit.count
        checks.add(verify_prompt(unit.chunk, blank, verify_template), pipeline.check_decoding(unit.count).max_tokens,
                   extra_prompt_tokens=4 * max_tokens)
    return writing, checks


def dry_run(cfg: DocumentsConfig) -> tuple[str, str]:
    """The first prompt of the run (for windows, its first pair), and the most the run can take.
    Calls nothing."""
    cfg.validate()
    chunks, _, pipeline = prepare(cfg)
    settings = pipeline.settings
    head = (f"dry run: {len(chunks)} {'sections' if cfg.mode == 'windows' else 'chunks'} from "
            f"{len({c.source for c in chunks})} file(s), mode {cfg.mode}")
    if not settings.uses_teacher:
        pairs = sum(window_count(len(c.sentences), cfg.window) + bool(c.headings) for c in chunks)
        example = next((e for c in chunks
                        for e in window_examples(c, cfg.window, (0, min(1, window_count(len(c.sentences), cfg.window))))[:1]),
                       None)
        first = json.dumps(example.to_alpaca(), ensure_ascii=False) if example else ""
        return first, f"{head}\n{pairs} window and heading pairs before filters; no requests, no cost"
    kind, model = planned_teacher(cfg)
    price = price_of(model, cfg, local=kind == "local")
    writing, checks = bounds(pipeline, cfg.decoding().max_tokens,
                             load_template("documents_verify.txt", cfg.verify_prompt_path, "--verify_prompt_path"))
    asked = "each chunk"
    if settings.by_paragraph:
        answers = sum(pipeline.unit(i).count for i in range(len(chunks)))
        head += f", {answers} paragraphs of at least {cfg.min_paragraph_words} words (short ones joined) as answers"
        asked = "each paragraph"
    lines = [head, f"writing, {asked} asked once and retried once at most: {writing.describe(price)}"]
    if settings.verifies:
        lines.append(f"grounding checks, one a chunk: {checks.describe(price)}")
    if cfg.mode == "conversations":
        lines.append(f"then {2 * (cfg.turns - 1)} requests for each question kept, to grow it into {cfg.turns} turns")
    elif settings.mode in ("qa", "instruct"):
        lines.append(f"--no_verify saves up to {checks.describe(price)}")
    total = Bound(writing.requests + checks.requests * settings.verifies,
                  writing.prompt_tokens + checks.prompt_tokens * settings.verifies,
                  writing.completion_tokens + checks.completion_tokens * settings.verifies)
    lines.append(f"at most: {total.describe(price)}" + ("" if price else " (cost unknown for this model: pass "
                                                        "--price_prompt and --price_completion)"))
    batch_price = find_batch_price(model, price, cfg)
    if price is not None and batch_price != price:
        full, batched = total.cost(price), total.cost(batch_price)
        lines.append(f"{'with' if cfg.batch else 'through'} --batch: at most {format_cost(batched)}, "
                     f"{format_cost(full - batched)} less (answers within 24 hours)")
    if cfg.max_requests or cfg.max_total_tokens or cfg.max_cost:
        lines.append("the budget flags stop the run earlier where they are lower")
    return pipeline.prompt(pipeline.unit(0)), "\n".join(lines)


# --- the command ---

def run_command(cfg: DocumentsConfig) -> None:
    if cfg.dry_run:
        prompt, bound = dry_run(cfg)
        if prompt:
            print(prompt)  # stdout holds the prompt alone, to pipe or diff
        print(bound, file=sys.stderr)
        return
    result = execute(adocuments(cfg))
    finish(f"{result.kept} examples from {result.chunks} chunks", result)
    if not cfg.no_report:
        from .report import write_report_after_run
        write_report_after_run(cfg.output_dir)


main = command(DocumentsConfig, run_command, """Make instruction data from documents: .txt .md .pdf .html .epub .docx .srt .vtt files, or directories of them.

Modes: qa (question/answer pairs grounded in each chunk), instruct (Dolly-style tasks with the
chunk as their context), backtranslate (the chunk, or each of its paragraphs, is the answer; the
teacher writes the instruction), windows (no teacher: sentence windows of each section). In qa and
instruct a second call checks each answer against its chunk. Teacher, budget and dedup flags are
generate's. Rerun the same command to resume: each chunk is done exactly once, in order.
""")


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.documents",
                 interrupted="interrupted; every finished chunk is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
