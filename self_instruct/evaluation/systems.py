"""The systems an evaluation compares, as teachers the engine can ask: a local Hugging Face
causal LM (with a LoRA adapter from self_instruct.train, or a GGUF file loaded through
transformers) or any OpenAI-compatible server; and the prompt every one of them gets.

    base=hf:models/base   tuned=hf:models/base:runs/lora   served=openai:my-lora@http://127.0.0.1:8000/v1

A NAME ending in +rag puts the top snippets retrieved from the documents into its prompt.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.templates import render_training_prompt
from ..errors import ConfigError
from ..io.secrets import redact_url
from ..teachers.base import Teacher
from ..types import Completion, Decoding

INSTALL_HINT = "pip install 'self_instruct[eval]'"
SYSTEM_MESSAGE = "Answer the question succinctly, in one sentence or less. If context is given, answer from it."
LAYOUTS = ("template", "chat")
# A base model given the training template tends to write the next "### Instruction:" block
# itself; the stop ends every system's answer at the same place.
TEMPLATE_STOP = ("\n###",)
# A system's name names its folder in the evaluation's output directory.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """One system under test: NAME=hf:PATH[:ADAPTER] or NAME=openai:MODEL@BASE_URL. `spec` is what
    eval.json, run.json and results.json show (credentials in the URL masked); `base_url` is the
    address itself."""

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
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--system {text}: a NAME is letters, digits and _ . + - (it names the system's folder)")
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
        return SystemSpec(name, redact_url(spec), "openai", model, base_url=base_url or None)
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


def build_prompt(question: str, snippets: Sequence[dict], layout: str, system_message: str, templates: dict | None) -> str:
    """The text a system gets. Template layout: the training template with the system message and
    question as the instruction and the numbered snippets as the input (as train.as_instruction
    joins a system message to the user's text). Chat layout: the same parts in one user turn.
    """
    context = "\n\n".join(f"[{i}] {s['text']}" for i, s in enumerate(snippets, 1))
    if layout == "template":
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

            from ..io.models import resize_embeddings

            resize_embeddings(model, self.tokenizer)
            model = PeftModel.from_pretrained(model, adapter)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # padding only: left pads are masked out
        self.model = model.to(self.device).eval()

    def generate(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        """Greedy answers to `prompts`, generated together (the same as one at a time)."""
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

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


class LocalModelTeacher(Teacher):
    """A local model as a teacher the engine can ask: the prompts asked at once (up to
    `batch_size`, which the engine keeps in flight) are generated as one batch, off the event loop."""

    def __init__(self, system: SystemSpec, layout: str, batch_size: int):
        self.model_id = system.spec
        self.batch_size = batch_size
        self.model = LocalModel(system.model, system.adapter, layout)
        self._waiting: list[tuple[str, Decoding, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prompts]
        self._waiting += [(p, decoding, f) for p, f in zip(prompts, futures)]
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # the asks launched together join one batch
            decoding = self._waiting[0][1]
            batch = [w for w in self._waiting if w[1] == decoding][:self.batch_size]
            self._waiting = [w for w in self._waiting if w not in batch]
            try:
                replies = await asyncio.to_thread(self.model.generate, [p for p, _, _ in batch], decoding)
            except Exception as exc:  # the batch fails as a whole: each of its asks gets the error
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), reply in zip(batch, replies):
                if not future.done():
                    future.set_result(reply)

    async def aclose(self) -> None:
        self.model.close()

    def describe(self) -> dict:
        return {"model": self.model_id, "backend": "local"}
