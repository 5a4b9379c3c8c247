"""Did the data help? `python -m self_instruct.evaluate` answers one question set with several
systems and scores every answer against its reference.

    python -m self_instruct.evaluate --questions questions.jsonl --docs rules/ --output_dir eval \\
        --system base=hf:models/base base+rag=hf:models/base \\
                 tuned=hf:models/base:runs/lora tuned+rag=hf:models/base:runs/lora

Questions are JSONL (`question`, `answer`, optional `source`), or `--holdout RUN`: the records a
generate or documents run held out (metadata.holdout), which export never writes.
A system is `hf:PATH` (a local causal LM or a .gguf file), `hf:PATH:ADAPTER` (PATH with a LoRA adapter from
self_instruct.train) or `openai:MODEL@BASE_URL` (any OpenAI-compatible server, e.g. vLLM serving
the fine-tune); a name ending in `+rag` puts the top `k` snippets retrieved from `--docs` into its
prompt (self_instruct.evaluation.retrieval: embeddings and BM25 fused by reciprocal rank). Every system gets
the same system message, greedy decoding and prompt layout: by default the training template
(prompts/train_*.txt) with the system message and question as the instruction and the snippets as
the input, exactly what self_instruct.train fine-tunes on (endpoints get it through the
completions API); `--prompt_layout chat` puts the same text in one user turn of each model's chat
template (endpoints: the chat API).

Writes to output_dir: answers.jsonl (every answer with its snippets and scores), results.json
and results.md (system x metric, means with 95% bootstrap intervals; also printed),
retrieval.json (hit@k and MRR for questions with a `source`), eval.json (the settings) and
state.json (requests and tokens spent, for the budgets). A judge (`--judge openai:MODEL@URL`)
grades each answer against the reference as correct / partly / wrong with a reason; its verdicts
are cached in judge_cache.jsonl, so a rerun asks nothing twice. Answers are appended as each
batch finishes: a killed evaluation, rerun, picks up where it stopped.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .evaluation import metrics
from .errors import ConfigError, DataError

from .io.jsonl import append_jsonl, iter_jsonl, read_json, repair_torn_tail, write_json_atomic, write_jsonl_atomic, write_text_atomic
from .types import Completion, Decoding

INSTALL_HINT = "pip install 'self_instruct[eval]'"
SYSTEM_MESSAGE = "Answer the question succinctly, in one sentence or less. If context is given, answer from it."
LAYOUTS = ("template", "chat")
# A base model given the training template tends to write the next "### Instruction:" block
# itself; the stop ends every system's answer at the same place.
TEMPLATE_STOP = ("\n###",)
VERDICTS = {"correct": 1.0, "partly": 0.5, "wrong": 0.0}
RUBRIC = """You grade an answer to a question against a reference answer.
- correct: it states what the reference states (wording may differ; extra detail is fine if it is not wrong).
- partly: it holds part of the reference, or the right fact mixed with a wrong one.
- wrong: it misses or contradicts the reference, or does not answer.

Question: {question}
Reference answer: {reference}
Answer to grade: {answer}

Reply with JSON only, on one line: {{"verdict": "correct" | "partly" | "wrong", "reason": "<one short sentence>"}}"""
OUTPUTS = ("answers.jsonl", "results.json", "results.md", "retrieval.json", "eval.json", "state.json")


# -----------------------------------------------------------------------------
# questions


@dataclass(frozen=True, slots=True)
class Question:
    id: int
    question: str
    answer: str
    source: str | None = None


def load_questions(path: str | Path) -> list[Question]:
    """Questions from JSONL: `question` and `answer` (the reference) strings, optional `source`.

    A bad line stops everything with `file:line: field "answer" is missing` and the like.
    """
    questions = []
    for lineno, obj in iter_jsonl(path):
        fields = {}
        for name in ("question", "answer", "source"):
            value = obj.get(name)
            if value is None and name == "source":
                continue
            if value is None:
                raise DataError(f'{path}:{lineno}: field "{name}" is missing (a question needs "question" and "answer")')
            if not isinstance(value, str) or not value.strip():
                raise DataError(f'{path}:{lineno}: field "{name}" must be a non-empty string (got {json.dumps(value)})')
            fields[name] = value
        questions.append(Question(len(questions), **fields))
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def holdout_questions(run: str | Path) -> list[Question]:
    """The records a generate or documents run held out for evaluation (metadata.holdout true,
    the records export never writes), as questions: the instruction and input as the question,
    the output as the reference, metadata.source as the source. `run` is the run's directory or
    its generated.jsonl."""
    path = Path(run) / "generated.jsonl" if Path(run).is_dir() else Path(run)
    questions = []
    for lineno, record in iter_jsonl(path):
        meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        if not meta.get("holdout"):
            continue
        for name in ("instruction", "output"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise DataError(f'{path}:{lineno}: field "{name}" must be a non-empty string')
        text = "\n\n".join(part for part in (record["instruction"], record.get("input") or "") if part)
        source = meta.get("source")
        questions.append(Question(len(questions), text, record["output"], source if isinstance(source, str) else None))
    if not questions:
        raise ConfigError(f"{path}: no record is held out (metadata.holdout); the run needs a holdout share")
    return questions


# -----------------------------------------------------------------------------
# systems


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """One system under test: NAME=hf:PATH[:ADAPTER] or NAME=openai:MODEL@BASE_URL."""

    name: str
    spec: str
    kind: str
    model: str
    adapter: str | None = None
    base_url: str | None = None

    @property
    def rag(self) -> bool:
        return self.name.endswith("+rag")


def parse_system(text: str) -> SystemSpec:
    """
    >>> parse_system("tuned+rag=openai:my-lora@http://127.0.0.1:8000/v1").base_url
    'http://127.0.0.1:8000/v1'
    """
    name, _, spec = text.partition("=")
    if not name or not spec:
        raise ConfigError(f"--system {text}: expected NAME=hf:PATH, NAME=hf:PATH:ADAPTER or NAME=openai:MODEL@BASE_URL")
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        path, _, adapter = rest.partition(":")
        if not ((Path(path) / "config.json").is_file() or (path.endswith(".gguf") and Path(path).is_file())):
            raise ConfigError(f"--system {text}: {path} is not a model directory (no config.json) or a GGUF file")
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"--system {text}: {adapter} is not a LoRA adapter directory (no adapter_config.json)")
        return SystemSpec(name, spec, "hf", path, adapter or None)
    if kind == "openai" and rest:
        model, _, base_url = rest.partition("@")
        return SystemSpec(name, spec, "openai", model, base_url=base_url or None)
    raise ConfigError(f"--system {text}: the model must be hf:PATH, hf:PATH:ADAPTER or openai:MODEL@BASE_URL")


def parse_systems(texts: Sequence[str]) -> list[SystemSpec]:
    systems = [parse_system(text) for text in texts]
    if not systems:
        raise ConfigError("give at least one --system NAME=SPEC")
    names = [s.name for s in systems]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"--system {name} is given twice; every system needs its own name")
    return systems


# -----------------------------------------------------------------------------
# prompts


def build_prompt(question: str, snippets: Sequence[dict], layout: str, system_message: str, templates: dict | None) -> str:
    """The text a system gets. Template layout: the training template with the system message and
    question as the instruction and the numbered snippets as the input (as train.as_instruction
    joins a system message to the user's text). Chat layout: the same parts in one user turn.
    """
    context = "\n\n".join(f"[{i}] {s['text']}" for i, s in enumerate(snippets, 1))
    if layout == "template":
        from .core.templates import render_training_prompt

        instruction = "\n\n".join(part for part in (system_message, question) if part)
        return render_training_prompt({"instruction": instruction, "input": context}, templates)
    return "\n\n".join(part for part in (system_message, context and f"Context:\n{context}", f"Question: {question}") if part)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop sequence, stripped.

    >>> cut_at_stop("Paris.\\n### Instruction: more", ["\\n###"])
    'Paris.'
    """
    for marker in stop:
        text = text.split(marker, 1)[0]
    return text.strip()


# -----------------------------------------------------------------------------
# models that answer


class LocalModel:
    """A local HF causal LM, with a LoRA adapter when given; greedy, batched, left-padded."""

    def __init__(self, path: str, adapter: str | None, layout: str):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigError(f"local models need torch and transformers: {INSTALL_HINT}") from None
        self.torch, self.layout = torch, layout
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        # The adapter's folder holds the tokenizer it was trained with (a pad token may have been added).
        # A GGUF file is loaded through transformers, dequantised.
        where = {"pretrained_model_name_or_path": str(Path(path).parent), "gguf_file": Path(path).name} \
            if path.endswith(".gguf") else {"pretrained_model_name_or_path": path}
        self.tokenizer = AutoTokenizer.from_pretrained(adapter, padding_side="left") if adapter else \
            AutoTokenizer.from_pretrained(**where, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype)
        if adapter:
            from peft import PeftModel

            from .train import resize_embeddings

            resize_embeddings(model, self.tokenizer)
            model = PeftModel.from_pretrained(model, adapter)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # padding only: left pads are masked out
        self.model = model.to(self.device).eval()

    async def answer(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        texts = list(prompts)
        if self.layout == "chat":
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                        add_generation_prompt=True) for p in prompts]
        # Templates rendered by the chat template carry their own BOS; training prompts get it here,
        # as self_instruct.train adds it.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=self.layout == "template")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        extra = {"stop_strings": list(decoding.stop), "tokenizer": self.tokenizer} if decoding.stop else {}
        with self.torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=decoding.max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id, **extra)
        width, ends = batch["input_ids"].shape[1], {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        completions = []
        for row, mask in zip(out.tolist(), batch["attention_mask"]):
            new = row[width:]
            new = new[:next((i for i, token in enumerate(new) if token in ends), len(new))]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            completions.append(Completion(cut_at_stop(text, decoding.stop), prompt_tokens=int(mask.sum()),
                                          completion_tokens=len(new)))
        return completions

    async def aclose(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


class EndpointModel:
    """An OpenAI-compatible server, through the same client (retries, faults) as the teachers."""

    def __init__(self, model: str, base_url: str | None, api_key: str | None, layout: str, concurrency: int):
        from .teachers.openai_compat import OpenAITeacher

        self.teacher = OpenAITeacher(model, base_url=base_url, api_key=api_key,
                                     api="completions" if layout == "template" else "chat", max_concurrency=concurrency)

    async def answer(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        replies = await self.teacher.complete(list(prompts), decoding)
        return [Completion(cut_at_stop(r.text, decoding.stop), r.finish_reason, r.prompt_tokens, r.completion_tokens,
                           r.error, r.faults) for r in replies]

    async def aclose(self) -> None:
        await self.teacher.aclose()


def load_model(system: SystemSpec, layout: str, api_key: str | None, concurrency: int):
    if system.kind == "hf":
        return LocalModel(system.model, system.adapter, layout)
    return EndpointModel(system.model, system.base_url, api_key, layout, concurrency)


# -----------------------------------------------------------------------------
# the judge


def parse_verdict(text: str) -> dict | None:
    """The judge's {"verdict", "reason"}, found in its reply; None when there is none.

    >>> parse_verdict('Sure. {"verdict": "Partly", "reason": "Names the city,\\nnot the year."}')
    {'verdict': 'partly', 'reason': 'Names the city, not the year.'}
    """
    match = re.search(r"\{.*\}", text, re.S)
    try:
        # strict=False: judges put raw line breaks inside strings
        obj = json.loads(match.group(0), strict=False) if match else None
    except json.JSONDecodeError:
        return None
    verdict = obj.get("verdict") if isinstance(obj, dict) else None
    if not isinstance(verdict, str) or verdict.strip().lower() not in VERDICTS:
        return None
    reason = obj.get("reason")
    return {"verdict": verdict.strip().lower(), "reason": " ".join(str(reason or "").split())}


class Judge:
    """Grades answers through an OpenAI-compatible teacher; verdicts are cached on disk, keyed by
    the judge model, the rubric, the question, the reference and the answer."""

    def __init__(self, spec: str, api_key: str | None, api: str, concurrency: int, cache_path: Path):
        from .teachers.openai_compat import OpenAITeacher

        kind, _, rest = spec.partition(":")
        model, _, base_url = rest.partition("@")
        if kind != "openai" or not model:
            raise ConfigError(f"--judge {spec}: expected openai:MODEL@BASE_URL")
        self.teacher = OpenAITeacher(model, base_url=base_url or None, api_key=api_key, api=api, max_concurrency=concurrency)
        self.cache_path = cache_path
        repair_torn_tail(cache_path)
        self.cache = {obj["key"]: obj["judge"] for _, obj in iter_jsonl(cache_path)} if cache_path.exists() else {}

    def key(self, record: dict) -> str:
        fields = [self.teacher.model_id, RUBRIC, record["question"], record["reference"], record["answer"]]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()

    async def grade(self, records: Sequence[dict]) -> tuple[list[dict | None], list[Completion]]:
        """A verdict (or None when the judge's reply held none) per record, and the requests sent."""
        keys = [self.key(r) for r in records]
        # One request per distinct answer: systems often give the same one ("I do not know.").
        first = {key: i for i, key in reversed(list(enumerate(keys))) if key not in self.cache}
        ask = sorted(first.values())
        prompts = [RUBRIC.format(question=records[i]["question"], reference=records[i]["reference"],
                                 answer=records[i]["answer"]) for i in ask]
        replies = await self.teacher.complete(prompts, Decoding(max_tokens=200, temperature=0.0)) if prompts else []
        fresh = []
        for i, reply in zip(ask, replies):
            verdict = parse_verdict(reply.text) if reply.ok else None
            if verdict:
                self.cache[keys[i]] = verdict
                fresh.append({"key": keys[i], "judge": verdict})
        append_jsonl(self.cache_path, fresh)
        return [self.cache.get(key) for key in keys], replies

    async def aclose(self) -> None:
        await self.teacher.aclose()


# -----------------------------------------------------------------------------
# the run


@dataclass
class EvalConfig:
    output_dir: str
    systems: list[SystemSpec]
    docs: Sequence[str] = ()
    k: int = 3
    embedder: str | None = None
    retrieval: str = "hybrid"
    similarity: str = "cosine"
    chunk_tokens: int = 300
    chunk_overlap: int = 50
    system_message: str = SYSTEM_MESSAGE
    prompt_layout: str = "template"
    prompt_with_input: str | None = None
    prompt_no_input: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    judge: str | None = None
    judge_api: str = "chat"
    max_requests: int | None = None
    max_total_tokens: int | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if self.prompt_layout not in LAYOUTS:
            raise ConfigError(f"--prompt_layout must be one of {', '.join(LAYOUTS)} (got {self.prompt_layout!r})")
        for name in ("k", "max_new_tokens", "batch_size", "chunk_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be a positive whole number (got {getattr(self, name)})")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ConfigError(f"--chunk_overlap must be from 0 to below --chunk_tokens ({self.chunk_tokens}) "
                              f"(got {self.chunk_overlap})")
        rag = [s.name for s in self.systems if s.rag]
        if rag and not self.docs:
            raise ConfigError(f"--system {rag[0]} retrieves from documents: pass --docs PATH ...")
        if self.judge_api not in ("chat", "completions"):
            raise ConfigError(f"--judge_api must be chat or completions (got {self.judge_api!r})")

    def settings(self, questions: Sequence[Question]) -> dict:
        """What eval.json records: every setting an answer depends on (the judge is not one)."""
        digest = hashlib.sha256(json.dumps([[q.question, q.answer, q.source] for q in questions]).encode()).hexdigest()
        keep = ("k", "embedder", "retrieval", "similarity", "chunk_tokens", "chunk_overlap", "system_message",
                "prompt_layout", "prompt_with_input", "prompt_no_input", "max_new_tokens")
        return {"questions": len(questions), "questions_sha256": digest, "docs": [str(d) for d in self.docs],
                **{name: getattr(self, name) for name in keep}, "systems": {s.name: s.spec for s in self.systems}}


def check_resume(output_dir: Path, settings: dict, overwrite: bool) -> dict:
    """Settings for eval.json: the previous run's systems plus new ones. Refuses a directory whose
    answers were made otherwise (another question set, prompt, decoding, a system renamed to
    another model), unless --overwrite, which starts it afresh."""
    previous = read_json(output_dir / "eval.json")
    if overwrite:
        for name in OUTPUTS + ("judge_cache.jsonl",):
            (output_dir / name).unlink(missing_ok=True)
        return settings
    if not previous:
        return settings
    changed = [key for key in settings if key != "systems" and previous.get(key) != settings[key]]
    changed += [f"system {name}" for name, spec in settings["systems"].items()
                if previous.get("systems", {}).get(name, spec) != spec]
    if changed:
        raise ConfigError(f"{output_dir / 'eval.json'}: this output directory holds answers made with other settings "
                          f"({', '.join(changed[:3])}); use another --output_dir, the same flags, or --overwrite")
    return {**settings, "systems": {**previous.get("systems", {}), **settings["systems"]}}


class Budget:
    """Requests and tokens sent to servers (endpoint systems and the judge), across resumes."""

    def __init__(self, path: Path, max_requests: int | None, max_total_tokens: int | None):
        self.path, self.max_requests, self.max_total_tokens = path, max_requests, max_total_tokens
        self.state = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "failed": 0, **(read_json(path) or {})}

    def exhausted(self) -> str | None:
        if self.max_requests is not None and self.state["requests"] >= self.max_requests:
            return "max_requests"
        if self.max_total_tokens is not None and self.state["prompt_tokens"] + self.state["completion_tokens"] >= self.max_total_tokens:
            return "max_total_tokens"
        return None

    def spend(self, replies: Sequence[Completion]) -> None:
        self.state["requests"] += len(replies)
        self.state["prompt_tokens"] += sum(r.prompt_tokens for r in replies)
        self.state["completion_tokens"] += sum(r.completion_tokens for r in replies)
        write_json_atomic(self.path, self.state)


def retrieve(questions: Sequence[Question], cfg: EvalConfig, output_dir: Path, api_key: str | None) -> list[list[dict]]:
    """Top-k snippets for every question; writes retrieval.json."""
    from .evaluation.retrieval import Index, load_passages, make_embedder, retrieval_quality

    chunks = load_passages(cfg.docs, cfg.chunk_tokens, cfg.chunk_overlap)
    embedder = make_embedder(cfg.embedder, api_key) if cfg.retrieval != "bm25" else None
    index = Index.build(chunks, embedder, output_dir / "index", cfg.retrieval, cfg.similarity)
    results = index.search_many([q.question for q in questions], cfg.k)
    quality = retrieval_quality(results, [q.source for q in questions], cfg.k)
    write_json_atomic(output_dir / "retrieval.json", {**quality, "retrieval": cfg.retrieval,
                                                      "embedder": getattr(embedder, "name", None), "chunks": len(chunks)})
    return [[snippet.to_dict() for snippet in found] for found in results]


async def run_evaluation(questions: Sequence[Question], cfg: EvalConfig, api_key: str | None = None,
                         progress: bool = True) -> dict:
    """Answer, score, judge and summarise; returns what results.json holds."""
    cfg.validate()
    output_dir = Path(cfg.output_dir)
    if output_dir.is_file():
        raise ConfigError(f"--output_dir {output_dir} is a file")
    settings = check_resume(output_dir, cfg.settings(questions), cfg.overwrite)
    await check_endpoints(cfg, api_key)
    templates = None
    if cfg.prompt_layout == "template":
        from .core.templates import load_training_templates

        templates = load_training_templates(cfg.prompt_with_input, cfg.prompt_no_input)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "eval.json", settings)
    snippets = retrieve(questions, cfg, output_dir, api_key) if cfg.docs else [[] for _ in questions]
    budget = Budget(output_dir / "state.json", cfg.max_requests, cfg.max_total_tokens)
    answers_path = output_dir / "answers.jsonl"
    torn = repair_torn_tail(answers_path)
    if torn:
        print(f"self_instruct: {torn}", file=sys.stderr)
    stopped = await answer_all(questions, cfg, snippets, templates, answers_path, budget, api_key, progress)
    records = [obj for _, obj in iter_jsonl(answers_path)] if answers_path.exists() else []
    if cfg.judge and not stopped:
        stopped = await judge_all(records, cfg, output_dir, budget, api_key, progress)
    summary = summarize(records, cfg.systems, len(questions), judged=bool(cfg.judge))
    summary["retrieval"] = read_json(output_dir / "retrieval.json") if cfg.docs else None
    summary["stopped_by"] = stopped
    write_json_atomic(output_dir / "results.json", summary)
    write_text_atomic(output_dir / "results.md", render_results(summary))
    return summary


async def check_endpoints(cfg: EvalConfig, api_key: str | None) -> None:
    """Fail before anything is written when a server (a system's or the judge's) cannot be
    reached or refuses the key."""
    from .teachers.openai_compat import OpenAITeacher

    servers = {(s.model, s.base_url): f"--system {s.name}" for s in cfg.systems if s.kind == "openai"}
    if cfg.judge:
        model, _, base_url = cfg.judge.partition(":")[2].partition("@")
        servers.setdefault((model, base_url or None), "--judge")
    for (model, base_url), flag in servers.items():
        teacher = OpenAITeacher(model, base_url=base_url, api_key=api_key)
        try:
            await teacher.check()
        except ConfigError as exc:
            reason = "refused the API key (401): set OPENAI_API_KEY or --api_key" if "(401)" in str(exc) else \
                "cannot be reached: start it or fix the URL"
            raise ConfigError(f"{flag}: the server at {base_url or 'api.openai.com'} {reason}") from None
        finally:
            await teacher.aclose()


async def answer_all(questions, cfg: EvalConfig, snippets, templates, answers_path: Path, budget: Budget,
                     api_key: str | None, progress: bool) -> str | None:
    """Answer every question not yet answered by each system, a batch at a time, appending each
    batch to answers.jsonl; returns the budget that stopped it, or None."""
    done = {(obj["system"], obj["id"]) for _, obj in iter_jsonl(answers_path)} if answers_path.exists() else set()
    todo = {s.name: [q for q in questions if (s.name, q.id) not in done] for s in cfg.systems}
    decoding = Decoding(max_tokens=cfg.max_new_tokens, temperature=0.0,
                        stop=TEMPLATE_STOP if cfg.prompt_layout == "template" else ())
    bar = tqdm(total=sum(map(len, todo.values())), desc="answers", unit="answer", file=sys.stderr, disable=not progress)
    try:
        for system in cfg.systems:
            if not todo[system.name]:
                continue
            bar.set_postfix_str(system.name)
            model = load_model(system, cfg.prompt_layout, api_key, cfg.batch_size)
            try:
                for start in range(0, len(todo[system.name]), cfg.batch_size):
                    if system.kind == "openai" and budget.exhausted():
                        return budget.exhausted()
                    batch = todo[system.name][start:start + cfg.batch_size]
                    found = [snippets[q.id] if system.rag else [] for q in batch]
                    prompts = [build_prompt(q.question, s, cfg.prompt_layout, cfg.system_message, templates)
                               for q, s in zip(batch, found)]
                    replies = await model.answer(prompts, decoding)
                    append_jsonl(answers_path, [answer_record(system, q, s, r) for q, s, r in zip(batch, found, replies) if r.ok])
                    if system.kind == "openai":
                        budget.spend(replies)
                    failed = [r.error for r in replies if not r.ok]
                    if failed:
                        budget.state["failed"] += len(failed)
                        print(f"self_instruct: {len(failed)} answers of {system.name} failed ({failed[0]}); "
                              f"rerun to retry them", file=sys.stderr)
                    bar.update(len(batch))
            finally:
                await model.aclose()
    finally:
        bar.close()
    return None


def answer_record(system: SystemSpec, question: Question, snippets: list[dict], reply: Completion) -> dict:
    return {"system": system.name, "id": question.id, "question": question.question, "reference": question.answer,
            "source": question.source, "answer": reply.text, "snippets": snippets,
            "scores": metrics.score_answer(reply.text, question.answer),
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}


async def judge_all(records: list[dict], cfg: EvalConfig, output_dir: Path, budget: Budget, api_key: str | None,
                    progress: bool) -> str | None:
    """Add the judge's verdict and score to every record that lacks one, then rewrite answers.jsonl."""
    judge = Judge(cfg.judge, api_key, cfg.judge_api, cfg.batch_size, output_dir / "judge_cache.jsonl")
    pending = [r for r in records if "judge" not in r["scores"]]
    stopped = None
    bar = tqdm(total=len(pending), desc="judge", unit="answer", file=sys.stderr, disable=not progress)
    try:
        for start in range(0, len(pending), cfg.batch_size):
            stopped = budget.exhausted()
            if stopped:
                break
            batch = pending[start:start + cfg.batch_size]
            verdicts, replies = await judge.grade(batch)
            if replies:
                budget.spend(replies)
            for record, verdict in zip(batch, verdicts):
                if verdict:
                    record["judge"] = verdict
                    record["scores"]["judge"] = VERDICTS[verdict["verdict"]]
            bar.update(len(batch))
    finally:
        bar.close()
        await judge.aclose()
        write_jsonl_atomic(output_dir / "answers.jsonl", records)
    unjudged = sum("judge" not in r["scores"] for r in records)
    if unjudged and not stopped:
        print(f"self_instruct: the judge gave no usable verdict for {unjudged} answers; rerun to ask again", file=sys.stderr)
    return stopped


# -----------------------------------------------------------------------------
# results


def summarize(records: Sequence[dict], systems: Sequence[SystemSpec], questions: int, judged: bool) -> dict:
    """Per system and metric: the mean over its answered questions and a 95% bootstrap interval."""
    names = metrics.METRICS + (("judge",) if judged else ())
    rows = []
    for system in systems:
        mine = [r for r in records if r["system"] == system.name]
        row = {"name": system.name, "spec": system.spec, "rag": system.rag, "answered": len(mine), "metrics": {}}
        for name in names:
            values = [r["scores"][name] for r in mine if name in r["scores"]]
            if values:
                mean, low, high = metrics.bootstrap_interval(values)
                row["metrics"][name] = {"mean": mean, "low": low, "high": high, "n": len(values)}
        rows.append(row)
    return {"questions": questions, "metrics": list(names), "confidence": 0.95, "systems": rows}


def render_results(summary: dict) -> str:
    """results.md: the system x metric table, then retrieval quality."""
    header = ["system", "answered"] + summary["metrics"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary["systems"]:
        cells = [row["name"], f"{row['answered']}/{summary['questions']}"]
        for name in summary["metrics"]:
            m = row["metrics"].get(name)
            cells.append(f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" if m else "-")
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"Means over questions with 95% bootstrap intervals ({summary['questions']} questions).\n\n"
            + "\n".join(lines) + "\n")
    quality = summary.get("retrieval")
    if quality and quality.get("questions"):
        text += (f"\nRetrieval ({quality['retrieval']}): hit@{quality['k']} {quality['hit_at_k']:.3f}, "
                 f"MRR {quality['mrr']:.3f} over {quality['questions']} questions with a source.\n")
    if summary.get("stopped_by"):
        text += f"\nStopped by {summary['stopped_by']}: raise it and rerun to finish.\n"
    return text


# -----------------------------------------------------------------------------
# command line


def main(system: str = "", output_dir: str = "eval", questions: str | None = None, holdout: str | None = None,
         docs: str | None = None, k: int = 3,
         embedder: str | None = None, retrieval: str = "hybrid", similarity: str = "cosine",
         chunk_tokens: int = 300, chunk_overlap: int = 50, system_message: str = SYSTEM_MESSAGE,
         prompt_layout: str = "template", prompt_with_input: str | None = None, prompt_no_input: str | None = None,
         max_new_tokens: int = 256, batch_size: int = 8, judge: str | None = None, judge_api: str = "chat",
         api_key: str | None = None, max_requests: int | None = None, max_total_tokens: int | None = None,
         overwrite: bool = False, quiet: bool = False, no_report: bool = False):
    """Answer a question set with several systems and score the answers against the references.

    Args:
        system: NAME=SPEC, one or more: SPEC is hf:PATH, hf:PATH:ADAPTER or openai:MODEL@BASE_URL;
            a NAME ending in +rag adds the top k snippets retrieved from --docs to the prompt.
        output_dir: where answers.jsonl, results.json/.md, retrieval.json, eval.json and state.json go.
        questions: JSONL with question, answer (the reference) and optionally source (a file name).
        holdout: instead of --questions, a generate or documents run (its directory or generated.jsonl):
            the records it held out for evaluation (metadata.holdout), which export never writes.
        docs: files or directories to retrieve from, one or more.
        k: snippets per question.
        embedder: a sentence-transformers directory or openai:MODEL@BASE_URL (default: the packaged all-MiniLM-L6-v2).
        retrieval: hybrid (embeddings and BM25 fused by reciprocal rank), dense or bm25.
        similarity: cosine or dot.
        chunk_tokens: chunk size for the documents.
        chunk_overlap: overlap between chunks.
        system_message: the instruction every system gets before the question.
        prompt_layout: template (the training template; endpoints use the completions API) or chat.
        prompt_with_input: your own training template with {instruction} and {input}.
        prompt_no_input: your own training template with {instruction}.
        max_new_tokens: the longest answer, in tokens (decoding is greedy).
        batch_size: questions per batch (generated together locally, sent concurrently to servers).
        judge: openai:MODEL@BASE_URL of a teacher that grades each answer (correct, partly, wrong).
        judge_api: chat or completions.
        api_key: key for servers (default OPENAI_API_KEY).
        max_requests: stop after this many requests to servers, across resumes.
        max_total_tokens: stop after this many tokens to and from servers, across resumes.
        overwrite: start output_dir afresh.
        quiet: no progress bars.
        no_report: skip report.html (a bar per system and metric, with its interval).
    """
    if (questions is None) == (holdout is None):
        raise ConfigError("give one of --questions FILE and --holdout RUN_DIR")
    asked = load_questions(questions) if questions else holdout_questions(holdout)
    cfg = EvalConfig(output_dir=output_dir, systems=parse_systems(system.split("\n") if system else []),
                     docs=docs.split("\n") if docs else (), k=k, embedder=embedder, retrieval=retrieval,
                     similarity=similarity, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
                     system_message=system_message, prompt_layout=prompt_layout, prompt_with_input=prompt_with_input,
                     prompt_no_input=prompt_no_input, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     judge=judge, judge_api=judge_api, max_requests=max_requests, max_total_tokens=max_total_tokens,
                     overwrite=overwrite)
    summary = asyncio.run(run_evaluation(asked, cfg, api_key or os.environ.get("OPENAI_API_KEY"), progress=not quiet))
    print(render_results(summary), end="")
    if not no_report:
        from .report import write_report_after_run
        write_report_after_run(output_dir)


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
    from .cli import run

    run(main, join_list_flags(sys.argv[1:] if argv is None else argv), name="self_instruct.evaluate")


if __name__ == "__main__":
    cli()
