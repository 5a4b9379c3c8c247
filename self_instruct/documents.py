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
import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import cli as cli_edge
from .options import DEFAULT_OPENAI_MODEL, TeacherOptions, choose_teacher_kind, make_teacher, sha256_of
from .engine.scheduler import Engine, Stats
from .errors import ConfigError, TeacherError
from .engine.judge import Judge, extra_filters
from .engine.ledger import Budget, Ledger, find_price, format_cost, prompt_bound
from .pipelines.documents import (
    MIN_PARAGRAPH_WORDS, RETRY_NOTE, DocumentSettings, DocumentsPipeline, load_document_template, verify_prompt, window_examples,
)
from .engine.pool import InstructionPool
from .sources.chunking import Chunk, chunk_documents, token_counter
from .sources.loaders import load_paths
from .teachers.base import Teacher
from .teachers.local import LocalTeacher
from .types import Completion, Decoding, Example

# Settings that shape the data: resuming with any of them changed would mix two runs in one pool.
SHAPING = (
    "mode", "model_name", "api", "teacher", "temperature", "top_p", "max_tokens", "chunk_size", "chunk_overlap",
    "tokenizer", "language", "questions_per_chunk", "questions_per_1k_tokens", "open_book", "verify", "window",
    "backtranslate_unit", "min_paragraph_words",
    "similarity_threshold", "decontaminate", "sources", "template_sha256", "verify_template_sha256",
)
DEFAULT_MAX_TOKENS = 1024


@dataclass
class DocumentsConfig(TeacherOptions):
    """Every option of a documents run (the command's flags). The API key is not a field."""

    paths: tuple[str, ...] = ()
    mode: str = "qa"
    output_dir: str = "out"
    chunk_size: int = 512
    chunk_overlap: int = 64
    tokenizer: str | None = None
    language: str = "en"
    questions_per_chunk: int | None = None
    questions_per_1k_tokens: float = 6.0
    open_book: bool = False
    verify: bool = True
    window: int = 5
    backtranslate_unit: str = "chunk"
    min_paragraph_words: int = MIN_PARAGRAPH_WORDS
    prompt_path: str | None = None
    verify_prompt_path: str | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int | None = None
    similarity_threshold: float = 0.7
    decontaminate: str | None = None
    judge: bool = False
    min_score: float | None = None
    judge_model: str | None = None
    judge_base_url: str | None = None
    max_stall_chunks: int = 10

    def settings(self) -> DocumentSettings:
        return DocumentSettings(mode=self.mode, questions_per_chunk=self.questions_per_chunk,
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
        self.settings().validate()
        for name in ("chunk_size", "max_concurrency", "max_stall_chunks", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name} must be a positive whole number (got {value!r})")
        if not 0 < self.similarity_threshold <= 1:
            raise ConfigError(f"--similarity_threshold must be in (0, 1] (got {self.similarity_threshold!r})")
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"--api must be 'completions' or 'chat' (got {self.api!r})")
        self.decoding()


@dataclass
class DocumentsResult:
    output_dir: Path
    chunks: int
    kept: int
    stats: Stats
    stopped_by: str


# --- reading ---

def read_chunks(cfg: DocumentsConfig, warn=print) -> tuple[list[Chunk], list[dict]]:
    """The run's chunks (sections in windows mode) and a fingerprint of every file read. Each
    file that cannot be read is one line through `warn`; none readable at all is an error."""
    documents, problems = load_paths(cfg.paths)
    for problem in problems:
        warn(f"self_instruct: skipped {problem}")
    if not documents:
        raise ConfigError(f"none of the {len(cfg.paths)} path(s) given holds a readable document")
    size = None if cfg.mode == "windows" else cfg.chunk_size
    overlap = 0 if cfg.mode == "windows" else cfg.chunk_overlap
    chunks = chunk_documents(documents, token_counter(cfg.tokenizer), size=size, overlap=overlap, language=cfg.language)
    if not chunks:
        raise ConfigError("the documents given hold no text to make examples from")
    sources = [{"path": d.path, "sha256": sha256_of(Path(d.path).read_bytes())} for d in documents]
    return chunks, sources


# --- the run ---

async def adocuments(cfg: DocumentsConfig, *, teacher: Teacher | None = None, api_key: str | None = None,
                     progress: bool = True) -> DocumentsResult:
    """Run (or resume) a documents run into cfg.output_dir."""
    cfg.validate()
    chunks, sources = read_chunks(cfg, warn=lambda line: print(line, file=sys.stderr))
    settings = cfg.settings()
    pipeline = DocumentsPipeline(chunks, settings, cfg.decoding())
    own_teacher = teacher is None and settings.uses_teacher
    if settings.uses_teacher:
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        cli_edge.register_secret(api_key)
        cfg.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        teacher = teacher or make_document_teacher(cfg, api_key)
    else:
        teacher = teacher or _NoTeacher()
    try:
        local = teacher.describe().get("backend") == "local"
        price = find_price(teacher.model_id, cfg.price_prompt, cfg.price_completion, local=local) if settings.uses_teacher else None
        if cfg.max_cost is not None and price is None:
            raise ConfigError(f"--max_cost needs the price of {teacher.model_id!r}: pass --price_prompt and --price_completion")
        config = run_config(cfg, teacher, pipeline, sources)
        if settings.mode in ("qa", "instruct") and not settings.verifies:
            _, checks = bounds(pipeline, cfg.decoding().max_tokens, load_document_template("verify", cfg.verify_prompt_path))
            print(f"self_instruct: --no_verify: no grounding check, which saves up to {checks.describe(price)}", file=sys.stderr)
        if settings.uses_teacher and hasattr(teacher, "check"):
            await teacher.check()
        with InstructionPool.open(cfg.output_dir, config=config, shaping=SHAPING, overwrite=cfg.overwrite,
                                  unit_key=pipeline.unit_key) as pool:
            for note in pool.notes:
                print(f"self_instruct: {note}", file=sys.stderr)
            ledger = Ledger(pool.dir, price, pool.next_unit)
            judge = Judge([r["instruction"] for r in pool.records], threshold=cfg.similarity_threshold,
                          extra_filters=extra_filters(cfg.decontaminate))
            engine = Engine(teacher, pool, judge, ledger, decoding=cfg.decoding(),
                            budget=Budget(cfg.max_requests, cfg.max_total_tokens, cfg.max_cost),
                            max_concurrency=cfg.max_concurrency, target=None, total_units=pipeline.unit_count,
                            # a stretch of sections of short sentences may keep nothing, and no teacher is to blame
                            max_stall_units=cfg.max_stall_chunks if settings.uses_teacher else None,
                            progress=progress, api=cfg.api)
            try:
                stopped_by = await engine.run(pipeline)
            finally:
                pool.write_regen()
                pool.save_state(engine.stats.to_state())
                ledger.forget_before(pool.next_unit)
            if cfg.judge and settings.uses_teacher:
                from .score import judge_pool
                await judge_pool(cfg, pool.dir, teacher, api_key, progress)
            return DocumentsResult(pool.dir, len(chunks), len(pool), engine.stats, stopped_by)
    finally:
        if own_teacher:
            await teacher.aclose()


class LocalDocumentTeacher(LocalTeacher):
    """The embedded model as a documents teacher. The prompts here are instructions to follow,
    not a numbered list to continue, so they go through the model's chat template (where the
    GGUF has one) and the reply ends where the model ends its turn: no "###" continuation.
    As a raw completion with the continuation, SmolLM2-135M wrote 1,024 tokens of '#' lines and
    stray prose to each of 4 qa prompts (all unparseable, 91 s); through its chat template it
    answered and stopped, but wrote prose where JSON was asked for (8 of 8 qa and instruct
    replies unparseable).

    So a request that wants JSON (`Decoding.json`) is decoded under a llama.cpp grammar: the
    model may only pick tokens that keep the reply valid JSON of the request's schema (a
    `ShapedDecoding` from the pipeline says which: qa pairs, instruct tasks, a backtranslated
    instruction, verdicts), and its end of turn is allowed only where the JSON is complete. A
    schema per request, rather than llama-cpp-python's plain json_object, because it fixes the
    field names and the count the parser needs: a grammar of any JSON object would still let
    through what the 135M model wrote for one backtranslated paragraph, {"description": ...,
    "type": "json"}, which holds no field the pipeline reads."""

    def __init__(self, model_path: str | None = None):
        super().__init__(model_path, continuation=None)
        self._usable_schemas: set[str] = set()

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        if self._chat_formatter is None:
            return await super().complete(prompts, decoding)
        return [await self.chat([{"role": "user", "content": prompt}], decoding) for prompt in prompts]

    def _sampling(self, decoding: Decoding) -> dict[str, Any]:
        sampling = super()._sampling(decoding)
        if decoding.json:
            sampling["grammar"] = self._grammar(getattr(decoding, "schema", ""))
        return sampling

    def _grammar(self, schema: str) -> Any:
        """The grammar of `schema`, tried once: llama.cpp refuses one it finds too big (a string
        capped at over 1,000 characters), and llama-cpp-python would crash the process with it."""
        grammar = json_grammar(schema)
        if schema not in self._usable_schemas:
            vocab = self._llama_cpp.llama_model_get_vocab(self._llm.model)
            sampler = self._llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode("utf-8"),
                                                                 grammar._root.encode("utf-8"))
            if not sampler:
                raise TeacherError(f"llama.cpp refuses the grammar of this JSON schema: {schema[:200]}")
            self._llama_cpp.llama_sampler_free(sampler)
            self._usable_schemas.add(schema)
        return grammar

    def describe(self) -> dict:
        return super().describe() | {"prompting": "raw" if self._chat_formatter is None else "chat template",
                                     "json_replies": "grammar from each request's JSON schema"}


@functools.lru_cache(maxsize=64)
def json_grammar(schema: str) -> Any:
    """The llama.cpp grammar of a JSON reply: one of `schema` (a JSON Schema, as text), or with
    none any JSON object (what llama-cpp-python gives for response_format json_object)."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar
    return LlamaGrammar.from_json_schema(schema, verbose=False) if schema else LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def make_document_teacher(cfg: DocumentsConfig, api_key: str | None) -> Teacher:
    """generate's teacher for the same flags, but the embedded model as `LocalDocumentTeacher`."""
    if (cfg.teacher or choose_teacher_kind(cfg.base_url, api_key)) == "local":
        return LocalDocumentTeacher(cfg.local_model_path)
    return make_teacher(cfg, api_key)


class _NoTeacher(Teacher):
    """Windows mode asks nothing; the engine still wants a teacher to name in the records."""

    model_id = "none"

    async def complete(self, prompts, decoding):
        raise AssertionError("windows mode never calls the teacher")


def run_config(cfg: DocumentsConfig, teacher: Teacher, pipeline: DocumentsPipeline, sources: list[dict]) -> dict:
    config = dataclasses.asdict(cfg)
    config.pop("overwrite")
    config.update(
        paths=list(cfg.paths), base_url=cli_edge.redact_url(cfg.base_url), sources=sources,
        max_tokens=cfg.decoding().max_tokens, verify=pipeline.settings.verifies,
        template_sha256=sha256_of(pipeline.template), verify_template_sha256=sha256_of(pipeline.verify_template),
        model_name=teacher.model_id, teacher_info=teacher.describe(),
    )
    return config


def documents(paths: Sequence[str], output_dir: str = "out", *, teacher: Teacher | None = None,
              api_key: str | None = None, progress: bool = True, **options) -> DocumentsResult:
    """Library entry point: `documents(["book.pdf"], "out", mode="qa", base_url=...)`."""
    cfg = DocumentsConfig(paths=tuple(str(p) for p in paths), output_dir=output_dir, **options)
    return asyncio.run(adocuments(cfg, teacher=teacher, api_key=api_key, progress=progress))


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

    def describe(self, price) -> str:
        cost = f", {format_cost(price.cost(self.prompt_tokens, self.completion_tokens))}" if price is not None else ""
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


def runs_locally(cfg: DocumentsConfig, api_key: str | None = None) -> bool:
    """Whether the run would use the embedded model, as `adocuments` would choose it (with no
    teacher configured at all, the dry run prices the default OpenAI model)."""
    if cfg.teacher:
        return cfg.teacher == "local"
    try:
        return choose_teacher_kind(cfg.base_url or os.environ.get("OPENAI_BASE_URL"),
                                   api_key or os.environ.get("OPENAI_API_KEY")) == "local"
    except ConfigError:
        return False


def dry_run(cfg: DocumentsConfig, api_key: str | None = None) -> tuple[str, str]:
    """The first prompt of the run (for windows, its first pair), and the most the run can take.
    Calls nothing."""
    cfg.validate()
    chunks, _ = read_chunks(cfg, warn=lambda line: print(line, file=sys.stderr))
    settings = cfg.settings()
    pipeline = DocumentsPipeline(chunks, settings, cfg.decoding())
    head = (f"dry run: {len(chunks)} {'sections' if cfg.mode == 'windows' else 'chunks'} from "
            f"{len({c.source for c in chunks})} file(s), mode {cfg.mode}")
    if not settings.uses_teacher:
        pairs = [e for c in chunks for e in window_examples(c, cfg.window)]
        first = json.dumps(pairs[0].to_alpaca(), ensure_ascii=False) if pairs else ""
        return first, f"{head}\n{len(pairs)} window and heading pairs before filters; no requests, no cost"
    price = find_price(cfg.model_name or DEFAULT_OPENAI_MODEL, cfg.price_prompt, cfg.price_completion,
                       local=runs_locally(cfg, api_key))
    writing, checks = bounds(pipeline, cfg.decoding().max_tokens, load_document_template("verify", cfg.verify_prompt_path))
    asked = "each chunk"
    if settings.by_paragraph:
        answers = sum(pipeline.unit(i).count for i in range(len(chunks)))
        head += f", {answers} paragraphs of at least {cfg.min_paragraph_words} words (short ones joined) as answers"
        asked = "each paragraph"
    lines = [head, f"writing, {asked} asked once and retried once at most: {writing.describe(price)}"]
    if settings.verifies:
        lines.append(f"grounding checks, one a chunk: {checks.describe(price)}")
    elif settings.mode in ("qa", "instruct"):
        lines.append(f"--no_verify saves up to {checks.describe(price)}")
    total = Bound(writing.requests + checks.requests * settings.verifies,
                  writing.prompt_tokens + checks.prompt_tokens * settings.verifies,
                  writing.completion_tokens + checks.completion_tokens * settings.verifies)
    lines.append(f"at most: {total.describe(price)}" + ("" if price else " (cost unknown for this model: pass "
                                                        "--price_prompt and --price_completion)"))
    if cfg.max_requests or cfg.max_total_tokens or cfg.max_cost:
        lines.append("the budget flags stop the run earlier where they are lower")
    return pipeline.prompt(pipeline.unit(0)), "\n".join(lines)


# --- the command ---

def main(
    *paths: str,
    mode: str = "qa",
    output_dir: str = "out",
    chunk_size: int = 512,
    chunk_overlap: int = 64,
    tokenizer: str | None = None,
    language: str = "en",
    questions_per_chunk: int | None = None,
    questions_per_1k_tokens: float = 6.0,
    open_book: bool = False,
    no_verify: bool = False,
    window: int = 5,
    backtranslate_unit: str = "chunk",
    min_paragraph_words: int = MIN_PARAGRAPH_WORDS,
    prompt_path: str | None = None,
    verify_prompt_path: str | None = None,
    model_name: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    api: str = "completions",
    teacher: str | None = None,
    local_model_path: str | None = None,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int | None = None,
    max_concurrency: int = 8,
    similarity_threshold: float = 0.7,
    decontaminate: str | None = None,
    judge: bool = False,
    min_score: float | None = None,
    judge_model: str | None = None,
    judge_base_url: str | None = None,
    max_requests: int | None = None,
    max_total_tokens: int | None = None,
    max_cost: float | None = None,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    no_stream: bool = False,
    price_prompt: float | None = None,
    price_completion: float | None = None,
    max_stall_chunks: int = 10,
    request_timeout: float = 120.0,
    max_attempts: int = 6,
    retry_backoff: float = 1.0,
    overwrite: bool = False,
    dry_run: bool = False,
    quiet: bool = False,
    no_report: bool = False,
):
    """Make instruction data from documents: .txt .md .pdf .html .epub .docx .srt .vtt files, or
    directories of them.

    Modes: qa (question/answer pairs grounded in each chunk; --open_book puts the chunk in the
    input), instruct (Dolly-style tasks with the chunk as context), backtranslate (the chunk is the
    answer, the teacher writes the instruction; --backtranslate_unit paragraph: each paragraph of
    at least --min_paragraph_words words is an answer, shorter ones join the next), windows (no teacher: every --window-th sentence
    is an instruction and the sentences after it its output). Chunks hold --chunk_size tokens
    (words, or --tokenizer's tokens: 'local', a .gguf file or a local Hugging Face tokenizer)
    and share --chunk_overlap tokens of whole sentences. qa asks --questions_per_chunk questions,
    or --questions_per_1k_tokens per 1,000 tokens. In qa and instruct a second call checks that
    each answer is supported by its chunk (--no_verify skips it). Teacher, budget and dedup
    flags are generate's. --dry_run prints the first prompt and the most the run can take.
    Rerun the same command to resume.
    """
    options = {k: v for k, v in locals().items() if k not in ("paths", "api_key", "dry_run", "quiet", "no_verify", "no_report", "no_stream")}
    cfg = DocumentsConfig(paths=paths, verify=not no_verify, stream=not no_stream, **options)
    if dry_run:
        prompt, bound = _dry_run(cfg, api_key)
        if prompt:
            print(prompt)  # stdout holds the prompt alone, to pipe or diff
        print(bound, file=sys.stderr)
        return None
    result = cli_edge.run_stoppable(adocuments(cfg, api_key=api_key, progress=not quiet))
    print(f"self_instruct: {result.kept} examples from {result.chunks} chunks in {result.output_dir} "
          f"(stopped by {result.stopped_by}); {result.stats.summary()}", file=sys.stderr)
    if result.stopped_by.startswith("max_"):
        print(f"self_instruct: budget {result.stopped_by} reached; raise it and rerun to resume", file=sys.stderr)
    cli_edge.report_after_run(cfg.output_dir, no_report)
    return None


_dry_run = dry_run


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, argv, name="self_instruct.documents",
                 interrupted="interrupted; every finished chunk is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
