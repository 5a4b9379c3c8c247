"""Did the data help? `python -m self_instruct.evaluate` answers one question set with several
systems and scores every answer against its reference.

    python -m self_instruct.evaluate --questions questions.jsonl --docs rules/ --output_dir eval \\
        --system base=hf:models/base base+rag=hf:models/base \\
                 tuned=hf:models/base:runs/lora tuned+rag=hf:models/base:runs/lora

Questions are JSONL (`question`, `answer`, optional `source`), or `--holdout RUN`: the records a
generate or documents run held out (metadata.holdout), which export never writes. A system is
`hf:PATH` (a local causal LM or a .gguf file), `hf:PATH:ADAPTER` (PATH with a LoRA adapter from
self_instruct.train) or `openai:MODEL@BASE_URL` (any OpenAI-compatible server); a name ending in
`+rag` puts the top `k` snippets retrieved from `--docs` into its prompt (embeddings and BM25
fused by reciprocal rank). Every system gets the same system message, greedy decoding and prompt
layout: by default the training template with the system message and question as the
instruction and the snippets as the input, exactly what self_instruct.train fine-tunes on
(endpoints get it through the completions API); `--prompt_layout chat` puts the same text in one
user turn of each model's chat template (endpoints: the chat API).

Answering and grading are pipelines on the engine, each a stage of one run in output_dir:
answers/NAME/ per system and grades/ for the judge (`--judge openai:MODEL@URL`: correct, partly
or wrong, with a reason). So a killed evaluation, rerun, asks only what it has no answer to yet,
a verdict is never asked twice, and `--max_requests` / `--max_total_tokens` are hard caps on the
requests sent to servers (systems and judge), across kills and reruns. At the end it writes
answers.jsonl (every answer with its snippets and scores), results.json and results.md (system x
metric, means with 95% bootstrap intervals; also printed), retrieval.json (hit@k and MRR for
questions with a `source`), eval.json (the settings) and state.json (what was spent).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import cli as cli_edge
from .core.templates import load_training_templates
from .engine.ledger import Budget, Spend, read_spend
from .engine.pool import LEDGER
from .engine.run import Run, execute
from .errors import ConfigError
from .evaluation import metrics
from .evaluation.answering import AnswerPipeline, Asked, answered_ids
from .evaluation.grading import VERDICTS, GradePipeline, ToGrade, grade_key, verdicts_of
from .evaluation.questions import Question, holdout_questions, load_questions
from .evaluation.results import render_results, summarize
from .evaluation.systems import (
    LAYOUTS,
    SYSTEM_MESSAGE,
    TEMPLATE_STOP,
    LocalModelTeacher,
    SystemSpec,
    build_prompt,
    parse_systems,
)
from .io.jsonl import (
    read_json,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from .io.secrets import redact_record, redact_url
from .options import (
    BudgetOptions,
    KeyOptions,
    RunOptions,
    command,
    one_of,
    option,
    positive_int,
    validate,
)
from .pipelines.score import keep_all
from .teachers.base import Teacher
from .types import Decoding

OUTPUTS = ("answers.jsonl", "results.json", "results.md", "retrieval.json", "eval.json", "state.json")
STAGES = ("answers", "grades")


@dataclass(kw_only=True)
class EvalConfig(RunOptions, BudgetOptions, KeyOptions):
    """Every setting of an evaluation: its flags, and the library's keywords."""

    system: str = option("", "NAME=SPEC, one or more: SPEC is hf:PATH, hf:PATH:ADAPTER or openai:MODEL@BASE_URL; "
                             "a NAME ending in +rag adds the top k snippets retrieved from --docs to the prompt")
    output_dir: str = option("eval", "where answers.jsonl, results.json/.md, retrieval.json, eval.json and state.json go")
    questions: str | None = option(None, "JSONL with question, answer (the reference) and optionally source (a file name)")
    holdout: str | None = option(None, "instead of --questions, a generate or documents run (its directory or "
                                       "generated.jsonl): the records it held out, which export never writes")
    docs: str = option("", "files or directories to retrieve from, one or more")
    k: int = option(3, "snippets per question", check=positive_int)
    embedder: str | None = option(None, "a sentence-transformers directory or openai:MODEL@BASE_URL (default: the "
                                        "packaged all-MiniLM-L6-v2)")
    retrieval: str = option("hybrid", "hybrid (embeddings and BM25 fused by reciprocal rank), dense or bm25")
    similarity: str = option("cosine", "cosine or dot")
    chunk_tokens: int = option(300, "chunk size for the documents", check=positive_int)
    chunk_overlap: int = option(50, "overlap between chunks")
    system_message: str = option(SYSTEM_MESSAGE, "the instruction every system gets before the question")
    prompt_layout: str = option("template", "template (the training template; endpoints use the completions API) or chat",
                                check=one_of(*LAYOUTS))
    prompt_with_input: str | None = option(None, "your own training template with {instruction} and {input}")
    prompt_no_input: str | None = option(None, "your own training template with {instruction}")
    max_new_tokens: int = option(256, "the longest answer, in tokens (decoding is greedy)", check=positive_int)
    batch_size: int = option(8, "questions answered at once (generated together locally, sent concurrently to servers)",
                             check=positive_int)
    judge: str | None = option(None, "openai:MODEL@BASE_URL of a teacher that grades each answer (correct, partly, wrong)")
    judge_api: str = option("chat", "chat or completions", check=one_of("chat", "completions"))
    no_report: bool = option(False, "no report.html (a bar per system and metric, with its interval)", record=False)

    @property
    def systems(self) -> list[SystemSpec]:
        return parse_systems([s for s in self.system.split("\n") if s])

    @property
    def doc_paths(self) -> list[str]:
        return [d for d in self.docs.split("\n") if d]

    def validate(self) -> None:
        validate(self)
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ConfigError(f"--chunk_overlap must be from 0 to below --chunk_tokens ({self.chunk_tokens}) "
                              f"(got {self.chunk_overlap})")
        rag = [s.name for s in self.systems if s.rag]
        if rag and not self.doc_paths:
            raise ConfigError(f"--system {rag[0]} retrieves from documents: pass --docs PATH ...")

    def settings(self, questions: Sequence[Question]) -> dict:
        """What eval.json records: every setting an answer depends on (the judge is not one),
        credentials in URLs (--embedder's, the systems') masked."""
        digest = hashlib.sha256(json.dumps([[q.question, q.answer, q.source] for q in questions]).encode()).hexdigest()
        keep = ("k", "embedder", "retrieval", "similarity", "chunk_tokens", "chunk_overlap", "system_message",
                "prompt_layout", "prompt_with_input", "prompt_no_input", "max_new_tokens")
        return redact_record({"questions": len(questions), "questions_sha256": digest, "docs": self.doc_paths,
                              **{name: getattr(self, name) for name in keep},
                              "systems": {s.name: s.spec for s in self.systems}})

    def answers_dir(self, system: SystemSpec) -> Path:
        return Path(self.output_dir) / "answers" / system.name

    def grades_dir(self) -> Path:
        return Path(self.output_dir) / "grades"


def check_resume(output_dir: Path, settings: dict, overwrite: bool) -> dict:
    """Settings for eval.json: the previous run's systems plus new ones. Refuses a directory whose
    answers were made otherwise (another question set, prompt, decoding, a system renamed to
    another model), unless --overwrite, which starts it afresh."""
    if overwrite:
        for name in OUTPUTS:
            (output_dir / name).unlink(missing_ok=True)
        for stage in STAGES:
            shutil.rmtree(output_dir / stage, ignore_errors=True)
        return settings
    previous = read_json(output_dir / "eval.json")
    if not previous:
        return settings
    changed = [key for key in settings if key != "systems" and previous.get(key) != settings[key]]
    changed += [f"system {name}" for name, spec in settings["systems"].items()
                if previous.get("systems", {}).get(name, spec) != spec]
    if changed:
        raise ConfigError(f"{output_dir / 'eval.json'}: this output directory holds answers made with other settings "
                          f"({', '.join(changed[:3])}); use another --output_dir, the same flags, or --overwrite")
    return {**settings, "systems": {**previous.get("systems", {}), **settings["systems"]}}


def retrieve(questions: Sequence[Question], cfg: EvalConfig, api_key: str | None, chunks: list) -> list[list[dict]]:
    """Top-k snippets for every question among `chunks` (load_passages'); writes retrieval.json."""
    from .evaluation.retrieval import Index, make_embedder, retrieval_quality

    output_dir = Path(cfg.output_dir)
    embedder = make_embedder(cfg.embedder, api_key) if cfg.retrieval != "bm25" else None
    index = Index.build(chunks, embedder, output_dir / "index", cfg.retrieval, cfg.similarity)
    results = index.search_many([q.question for q in questions], cfg.k)
    quality = retrieval_quality(results, [q.source for q in questions], cfg.k)
    write_json_atomic(output_dir / "retrieval.json", {**quality, "retrieval": cfg.retrieval,
                                                      "embedder": embedder.name if embedder else None,
                                                      "chunks": len(chunks)})
    return [[snippet.to_dict() for snippet in found] for found in results]


def endpoint_teacher(run: Run, model: str, base_url: str | None, api: str, concurrency: int) -> Teacher:
    from .teachers.openai_compat import OpenAITeacher

    return run.adopt(OpenAITeacher(model, base_url=base_url, api_key=run.api_key, api=api, max_concurrency=concurrency))


async def check_endpoints(servers: Sequence[tuple[str, str | None, Teacher]]) -> None:
    """Fail before anything is written when a server (a system's or the judge's, each named by
    its flag) cannot be reached or refuses the key."""
    for flag, base_url, teacher in servers:
        try:
            await teacher.check()
        except ConfigError as exc:
            reason = "refused the API key (401): set OPENAI_API_KEY or --api_key" if "(401)" in str(exc) else \
                "cannot be reached: start it or fix the URL"
            raise ConfigError(f"{flag}: the server at {base_url or 'api.openai.com'} {reason}") from None


async def run_evaluation(questions: Sequence[Question], cfg: EvalConfig) -> dict:
    """Answer, score, judge and summarise; returns what results.json holds."""
    cfg.validate()
    systems, output_dir = cfg.systems, Path(cfg.output_dir)
    if output_dir.is_file():
        raise ConfigError(f"--output_dir {output_dir} is a file")
    endpoints = [s for s in systems if s.kind == "openai"]
    # Requests to servers count against the budgets; local models' answers cost nothing.
    budgeted = [cfg.answers_dir(s) for s in endpoints] + [cfg.grades_dir()]
    async with Run(cfg, asks_teacher=False, stages=budgeted) as run:
        api = "completions" if cfg.prompt_layout == "template" else "chat"
        teachers = {s.name: endpoint_teacher(run, s.model, s.base_url, api, cfg.batch_size) for s in endpoints}
        servers = [(f"--system {s.name}", s.base_url, teachers[s.name]) for s in endpoints]
        judge = None
        if cfg.judge:
            kind, _, rest = cfg.judge.partition(":")
            model, _, base_url = rest.partition("@")
            if kind != "openai" or not model:
                raise ConfigError(f"--judge {cfg.judge}: expected openai:MODEL@BASE_URL")
            judge = endpoint_teacher(run, model, base_url or None, cfg.judge_api, cfg.batch_size)
            servers.append(("--judge", base_url or None, judge))
        settings = check_resume(output_dir, cfg.settings(questions), cfg.overwrite)
        await check_endpoints(servers)
        templates = None
        if cfg.prompt_layout == "template":
            templates = load_training_templates(cfg.prompt_with_input, cfg.prompt_no_input)
        chunks = None
        if cfg.doc_paths:  # documents that cannot be read are refused before anything is written
            from .evaluation.retrieval import load_passages
            chunks = load_passages(cfg.doc_paths, cfg.chunk_tokens, cfg.chunk_overlap)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "eval.json", settings)
        snippets = retrieve(questions, cfg, run.api_key, chunks) if chunks else [[] for _ in questions]
        stopped = None
        for system in systems:
            asked = [Asked(q, build_prompt(q.question, found, cfg.prompt_layout, cfg.system_message, templates),
                           tuple(found)) for q, found in zip(questions, (s if system.rag else [] for s in snippets))]
            outcome = await answer(run, cfg, system, teachers.get(system.name), asked)
            stopped = stopped or outcome
        records = collect_answers(cfg, systems)
        if judge is not None and not stopped:
            stopped = await grade(run, cfg, judge, records)
        attach_verdicts(cfg, judge, records)
        write_jsonl_atomic(output_dir / "answers.jsonl", records)
        write_json_atomic(output_dir / "state.json", spent(budgeted))
    unjudged = sum("judge" not in r["scores"] for r in records) if judge is not None else 0
    if unjudged and not stopped:
        print(f"self_instruct: the judge gave no usable verdict for {unjudged} answers; rerun to ask again", file=sys.stderr)
    summary = summarize(records, systems, len(questions), judged=judge is not None)
    summary["retrieval"] = read_json(output_dir / "retrieval.json") if cfg.doc_paths else None
    summary["stopped_by"] = stopped
    write_json_atomic(output_dir / "results.json", summary)
    write_text_atomic(output_dir / "results.md", render_results(summary))
    return summary


async def answer(run: Run, cfg: EvalConfig, system: SystemSpec, teacher: Teacher | None, asked: list[Asked]) -> str | None:
    """One system's stage: every question it has no answer to yet. Returns the budget that
    stopped it, or None."""
    decoding = Decoding(max_tokens=cfg.max_new_tokens, temperature=0.0,
                        stop=TEMPLATE_STOP if cfg.prompt_layout == "template" else ())
    with run.open(cfg.answers_dir(system), {"system": system.spec}) as pool:
        todo = [a for a in asked if a.question.id not in answered_ids(pool.records)]
        if not todo:
            return None
        local = teacher is None
        if local:
            teacher = run.adopt(LocalModelTeacher(system, cfg.prompt_layout, cfg.batch_size))
        try:
            outcome = await run.engine(pool, AnswerPipeline(todo, pool.next_unit, decoding.stop), keep_all,
                                       teacher=teacher, decoding=decoding, total_units=pool.next_unit + len(todo),
                                       budget=Budget() if local else None)
        finally:
            if local:
                await run.release(teacher)
    failed = outcome.stats.rejects.get("request_failed", 0)
    if failed:
        print(f"self_instruct: {failed} answers of {system.name} failed; rerun to retry them", file=sys.stderr)
    return outcome.stopped_by if outcome.stopped_by.startswith("max_") else None


def collect_answers(cfg: EvalConfig, systems: Sequence[SystemSpec]) -> list[dict]:
    """Every system's answers, in system then question order, with their reference scores."""
    from .io.jsonl import iter_jsonl

    records = []
    for system in systems:
        path = cfg.answers_dir(system) / "generated.jsonl"
        mine = [r for _, r in iter_jsonl(path)] if path.exists() else []
        for r in sorted(mine, key=lambda r: r["metadata"]["id"]):
            m = r["metadata"]
            records.append({"system": system.name, "id": m["id"], "question": r["instruction"], "reference": m["reference"],
                            "source": m["source"], "answer": r["output"], "snippets": m["snippets"],
                            "scores": metrics.score_answer(r["output"], m["reference"]),
                            "prompt_tokens": m["prompt_tokens"], "completion_tokens": m["completion_tokens"]})
    return records


async def grade(run: Run, cfg: EvalConfig, judge: Teacher, records: list[dict]) -> str | None:
    """The judge's stage: every distinct answer not graded yet. Returns the budget that stopped it, or None."""
    with run.open(cfg.grades_dir(), {"judge": redact_url(cfg.judge)}) as pool:
        known = verdicts_of(pool.records)
        todo = {}
        for record in records:
            key = grade_key(judge.model_id, record)
            if key not in known:
                todo.setdefault(key, ToGrade(key, record))
        if not todo:
            return None
        outcome = await run.engine(pool, GradePipeline(list(todo.values()), pool.next_unit), keep_all, teacher=judge,
                                   decoding=Decoding(max_tokens=200, temperature=0.0),
                                   total_units=pool.next_unit + len(todo))
    return outcome.stopped_by if outcome.stopped_by.startswith("max_") else None


def attach_verdicts(cfg: EvalConfig, judge: Teacher | None, records: list[dict]) -> None:
    if judge is None or not (cfg.grades_dir() / "generated.jsonl").exists():
        return
    from .io.jsonl import iter_jsonl

    known = verdicts_of([r for _, r in iter_jsonl(cfg.grades_dir() / "generated.jsonl")])
    for record in records:
        verdict = known.get(grade_key(judge.model_id, record))
        if verdict:
            record["judge"] = verdict
            record["scores"]["judge"] = VERDICTS[verdict["verdict"]]


def spent(stages: Sequence[Path]) -> dict:
    """What the budgeted stages sent, for state.json."""
    total = Spend()
    for stage in stages:
        s, _ = read_spend(stage / LEDGER)
        for name in ("requests", "failed", "prompt_tokens", "completion_tokens", "reserved_tokens"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
    return {"requests": total.requests, "failed": total.failed, "prompt_tokens": total.prompt_tokens,
            "completion_tokens": total.completion_tokens, "reserved_tokens": total.reserved_tokens}


# -----------------------------------------------------------------------------
# command line


def run_command(cfg: EvalConfig) -> None:
    if (cfg.questions is None) == (cfg.holdout is None):
        raise ConfigError("give one of --questions FILE and --holdout RUN_DIR")
    asked = load_questions(cfg.questions) if cfg.questions else holdout_questions(cfg.holdout)
    cfg.validate()
    summary = execute(run_evaluation(asked, cfg))
    print(render_results(summary), end="")
    if not cfg.no_report:
        from .report import write_report_after_run
        write_report_after_run(cfg.output_dir)


main = command(EvalConfig, run_command, """Answer a question set with several systems and score the answers against the references.""")

LIST_FLAGS = ("system", "docs")


def join_list_flags(argv: Sequence[str], names: Sequence[str] = LIST_FLAGS) -> list[str]:
    """Gather the words after each list flag, and its repeats, into one newline-joined value
    (the CLI edge takes one value per flag).

    >>> join_list_flags(["--system", "a=hf:x", "b=hf:y", "--k", "3", "--system=c=hf:z"])
    ['--k', '3', '--system', 'a=hf:x\\nb=hf:y\\nc=hf:z']
    """
    rest, lists, i = [], {}, 0
    while i < len(argv):
        name, has_value, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        i += 1
        if name not in names:
            rest.append(argv[i - 1])
            continue
        values = lists.setdefault(name, [])
        values += [value] if has_value else []
        while i < len(argv) and not argv[i].startswith("-"):
            values.append(argv[i])
            i += 1
    return rest + [part for name, values in lists.items() for part in (f"--{name}", "\n".join(values))]


def cli(argv: Sequence[str] | None = None) -> None:
    cli_edge.run(main, join_list_flags(sys.argv[1:] if argv is None else argv), name="self_instruct.evaluate",
                 interrupted="interrupted; every finished answer is saved, rerun the same command to resume")


if __name__ == "__main__":
    cli()
