"""Fine-tune a causal language model on instruction data: `python -m self_instruct.train`.

Supervised fine-tuning in the manner of Stanford Alpaca's train.py: each record becomes a prompt
(one template with input, one without) followed by the response and EOS; only the response and
EOS carry a loss, every prompt token gets the label -100; a pad token is added when the tokenizer
has none. Where we differ, and why:
- the prompt mask is placed by character offsets in the jointly tokenized text (a token is
  learned when it starts inside the response), not by counting the tokens of the prompt alone,
  a count that is off where one token spans the boundary; this needs a fast tokenizer;
- a record whose prompt alone fills model_max_length is dropped and counted, not kept with
  every label masked;
- full fine-tuning, LoRA and QLoRA (peft, bitsandbytes) in one script, and optional packing;
- a plain PyTorch loop on one device rather than transformers.Trainer: every step of the loss is
  in this file, the loss is averaged over response tokens across gradient accumulation, and
  nothing depends on Trainer's changing defaults. Multi-GPU sharding is not done here.

Reads every format the library writes or accepts: regen.json and other Alpaca JSON lists,
generated.jsonl and Alpaca JSONL (instruction, input, output; extra fields ignored), and chat
records ({"messages": [{"role", "content"}, ...]}). A chat record is rendered with the
tokenizer's chat template when it has one, and the loss falls on the assistant turns only
(system and user turns are masked); without a chat template it must be a single exchange, which
is trained as an instruction (a system message goes in front of the user's text).

Packing (--packing) fills blocks of model_max_length with whole examples and restarts
position_ids at 0 for each; transformers (>= 4.56) turns those restarts into a block-diagonal
mask for sdpa/eager attention and flash-attention uses them natively, so packed examples do not
attend to each other. Labels stay masked per example exactly as without packing.

torch, transformers and peft are imported only where they are used, so the data functions, --help
and every refusal of bad flags or data work (at once) without them.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

from .cli import run
from .core.templates import load_training_templates, render_training_prompt
from .errors import ConfigError, DataError
from .io.datasets import check_outputs
from .io.jsonl import iter_records
from .io.models import resize_embeddings

IGNORE_INDEX = -100  # label value that torch's cross_entropy skips
INSTALL_HINT = "pip install 'self_instruct[train]'"
MODES = ("full", "lora", "qlora")
METHODS = ("sft", "dpo")
ROLES = ("system", "user", "assistant")
# The transformers schedules that need nothing beyond warmup and total steps.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


# -----------------------------------------------------------------------------
# data: records from any file we write or accept


def load_records(path: str | Path) -> list[dict]:
    """Read instruction records or chat records from a JSON list or a JSONL file.

    Returns dicts {"instruction", "input", "output"} or {"messages": [...]}; raises DataError
    naming file:line (and the field) of the first bad record.
    """
    records = []
    for line, item in iter_records(path):
        try:
            records.append(_check_record(item))
        except ValueError as exc:
            raise DataError(f"{path}:{line}: {exc}") from None
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _check_record(item: dict) -> dict:
    if "messages" in item:
        return {"messages": _check_messages(item["messages"])}
    if isinstance(item.get("metadata"), dict) and "messages" in item["metadata"]:  # generate --turns: every turn
        return {"messages": _check_messages(item["metadata"]["messages"])}
    record = {}
    for field in ("instruction", "input", "output"):
        if field not in item and field != "input":
            raise ValueError(f'field "{field}" is missing (records need instruction, output and '
                             f'optionally input, or messages)')
        value = item.get(field, "")
        if not isinstance(value, str):
            got = "null" if value is None else type(value).__name__
            raise ValueError(f'field "{field}" must be a string (got {got})')
        record[field] = value
    if not record["instruction"].strip():
        raise ValueError('field "instruction" is empty')
    return record


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError('field "messages" must be a non-empty list of {"role", "content"}')
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)):
            raise ValueError(f'field "messages[{i}]" needs "role" (one of {", ".join(ROLES)}) and a string "content"')
    if messages[-1]["role"] != "assistant":
        raise ValueError('field "messages" must end with an assistant turn (it is what the model learns)')
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_pairs(path: str | Path) -> list[dict]:
    """Preference pairs for --method dpo: TRL's preference rows ({"prompt", "chosen", "rejected"},
    text) or the records `self_instruct.preferences` writes (instruction, input, output as the
    chosen answer, metadata.rejected). Returns {"instruction", "input", "chosen", "rejected"}."""
    pairs = []
    for line, item in iter_records(path):
        meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        pair = ({"instruction": item.get("prompt"), "input": "", "chosen": item.get("chosen"), "rejected": item.get("rejected")}
                if "prompt" in item else
                {"instruction": item.get("instruction"), "input": item.get("input") or "", "chosen": item.get("output"),
                 "rejected": meta.get("rejected")})
        for field, value in pair.items():
            if not isinstance(value, str) or (field != "input" and not value.strip()):
                where = "metadata.rejected" if field == "rejected" and "prompt" not in item else field
                raise DataError(f'{path}:{line}: field "{where}" must be a non-empty string (a preference pair needs '
                                f'prompt, chosen and rejected, or instruction, output and metadata.rejected)')
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    return pairs


# -----------------------------------------------------------------------------
# examples: token ids and labels, packing, batches


def build_example(tokenizer, record: dict, templates: dict[str, str], model_max_length: int) -> dict | None:
    """Token ids and labels for one record; labels are -100 except on what the model must say.

    The whole text is tokenized at once, as the model will read it, and a token is learned when
    it starts inside the response (for chat records: inside an assistant turn). The model then
    learns exactly the tokens it sees at inference, for SentencePiece tokenizers too, which give
    a response tokenized on its own a word-start piece ("▁Red") that the joined text does not.
    Returns None when truncation to model_max_length leaves no response token to learn from.
    """
    if "messages" in record and tokenizer.chat_template:
        # The template writes the special tokens (BOS, end-of-turn) itself.
        input_ids, labels = label_pieces(tokenizer, chat_pieces(tokenizer, record["messages"]), special_tokens=False)
    else:
        record = as_instruction(record) if "messages" in record else record
        # EOS as text, as Alpaca appends it: it is read back as the EOS token and learned.
        pieces = [(render_training_prompt(record, templates), False), (record["output"] + tokenizer.eos_token, True)]
        input_ids, labels = label_pieces(tokenizer, pieces, special_tokens=True)  # BOS where the tokenizer uses one
    input_ids, labels = input_ids[:model_max_length], labels[:model_max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def label_pieces(tokenizer, pieces: list[tuple[str, bool]], special_tokens: bool) -> tuple[list[int], list[int]]:
    """Tokenize the joined pieces once; label a token with its id when it starts inside a
    trained piece, else -100 (special tokens the tokenizer adds itself start at 0).

    Example (byte-level BPE): [("Q: hi\\nA:", False), (" Red", True)]
             -> tokens "Q", ":", " hi", "\\n", "A", ":", " Red" with labels -100 x 6, id(" Red")
    """
    text, spans, end = "", [], 0
    for piece, trained in pieces:
        text, end = text + piece, end + len(piece)
        if trained:
            spans.append((end - len(piece), end))
    # verbose=False: the tokenizer would warn about texts longer than model_max_length, which
    # build_example cuts itself.
    encoding = tokenizer(text, add_special_tokens=special_tokens, return_offsets_mapping=True, verbose=False)
    labels = [token if any(a <= start < b for a, b in spans) else IGNORE_INDEX
              for token, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"])]
    return encoding["input_ids"], labels


def chat_pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split a chat rendered by the tokenizer's template into (text, trained) pieces.

    Each assistant turn is the text the template adds after the generation prompt, end-of-turn
    marker included, so the model learns to stop. This needs a template that renders every
    shorter conversation as a prefix of the longer one.
    """
    def render(turns, generation_prompt):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, after = render(messages[:i], True), render(messages[: i + 1], False)
        if not (before.startswith(done) and after.startswith(before)):
            raise ConfigError("this tokenizer's chat template rewrites earlier turns, so assistant turns "
                              "cannot be masked exactly; convert the data to instruction/input/output")
        pieces += [(before[len(done):], False), (after[len(before):], True)]
        done = after
    return [(text, trained) for text, trained in pieces if text]


def as_instruction(record: dict) -> dict:
    """A single-exchange chat record as an instruction record, for tokenizers without a chat template.

    Example: [system "Be brief.", user "Name a colour.", assistant "Red."]
             -> {"instruction": "Be brief.\\n\\nName a colour.", "input": "", "output": "Red."}
    """
    roles = [m["role"] for m in record["messages"]]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise ConfigError("chat records with several turns need a tokenizer with a chat template "
                          "(this one has none); set tokenizer.chat_template or use instruction records")
    texts = [m["content"] for m in record["messages"]]
    return {"instruction": "\n\n".join(texts[:-1]), "input": "", "output": texts[-1]}


def pack(examples: list[dict], block_size: int) -> list[dict]:
    """Fill blocks of at most block_size tokens with whole examples, in order.

    position_ids restart at 0 for each example; the attention layers read those restarts as
    boundaries, and the labels keep each example's own masking.
    Example (block_size 5): lengths [2, 2, 3] -> blocks of lengths [4, 3],
             position_ids [[0, 1, 0, 1], [0, 1, 2]]
    """
    blocks = []
    for example in examples:
        n = len(example["input_ids"])
        if not blocks or len(blocks[-1]["input_ids"]) + n > block_size:
            blocks.append({"input_ids": [], "labels": [], "position_ids": []})
        blocks[-1]["input_ids"] += example["input_ids"]
        blocks[-1]["labels"] += example["labels"]
        blocks[-1]["position_ids"] += list(range(n))
    return blocks


def collate(batch: list[dict], pad_token_id: int) -> dict:
    """Right-pad examples into tensors: ids with the pad token, labels with -100.

    The attention mask comes from the lengths, not from `ids != pad`: the pad token may be the
    EOS token, which must stay visible where it ends a response. Packed blocks get no attention
    mask (a 2D mask would hide their boundaries); their padding becomes one more segment with
    positions from 0, which no real token attends to.
    """
    import torch

    width = max(len(example["input_ids"]) for example in batch)

    def padded(key, fill):
        return torch.tensor([ex[key] + [fill] * (width - len(ex[key])) for ex in batch])

    tensors = {"input_ids": padded("input_ids", pad_token_id), "labels": padded("labels", IGNORE_INDEX)}
    if "position_ids" in batch[0]:
        tensors["position_ids"] = torch.tensor(
            [ex["position_ids"] + list(range(width - len(ex["position_ids"]))) for ex in batch])
    else:
        tensors["attention_mask"] = torch.tensor(
            [[1] * len(ex["input_ids"]) + [0] * (width - len(ex["input_ids"])) for ex in batch])
    return tensors


def split_examples(tokenizer, records: list[dict], templates: dict[str, str], model_max_length: int,
                   held_out: int) -> tuple[list[dict], list[dict], int]:
    """Examples to train on, examples for the eval loss (the first held_out records), and how
    many records were dropped because their prompt fills model_max_length."""
    examples = [build_example(tokenizer, record, templates, model_max_length) for record in records]
    train_examples = [e for e in examples[held_out:] if e is not None]
    eval_examples = [e for e in examples[:held_out] if e is not None]
    return train_examples, eval_examples, len(examples) - len(train_examples) - len(eval_examples)


def build_pair(tokenizer, pair: dict, templates: dict[str, str], model_max_length: int) -> dict | None:
    """The chosen and the rejected answer after the same prompt, each labelled as build_example
    labels a response; None when truncation leaves either without a token to score."""
    sides = {}
    for side in ("chosen", "rejected"):
        example = build_example(tokenizer, {"instruction": pair["instruction"], "input": pair["input"],
                                            "output": pair[side]}, templates, model_max_length)
        if example is None:
            return None
        sides[side] = example
    return sides


def sequence_logps(model, batch: dict):
    """The summed log-probability of each row's labelled tokens: log pi(answer | prompt)."""
    import torch

    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE_INDEX
    logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * scored).sum(-1)


def pair_logps(model, pairs: list[dict], pad_token_id: int, device):
    """(chosen, rejected) log-probabilities of a batch of pairs, one forward pass for both sides."""
    rows = [pair["chosen"] for pair in pairs] + [pair["rejected"] for pair in pairs]
    logps = sequence_logps(model, {k: v.to(device) for k, v in collate(rows, pad_token_id).items()})
    return logps[:len(pairs)], logps[len(pairs):]


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """Rafailov et al.'s DPO loss, -log sigmoid(beta * (policy margin - reference margin)), per pair."""
    import torch

    return -torch.nn.functional.logsigmoid(beta * ((chosen - rejected) - (ref_chosen - ref_rejected)))


def dpo_step(model, micro_batches: list[list[dict]], optimizer, scheduler, scaler, autocast, max_grad_norm: float,
             *, beta: float, pad_token_id: int, device) -> float:
    """One optimizer step of DPO over the micro-batches; every pair weighs the same. Each pair
    holds its reference log-probabilities (the model before training, computed once)."""
    import torch

    count = sum(len(batch) for batch in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        with autocast():
            chosen, rejected = pair_logps(model, batch, pad_token_id, device)
        refs = torch.tensor([[pair["ref"][0], pair["ref"][1]] for pair in batch], device=device)
        loss = dpo_loss(chosen, rejected, refs[:, 0], refs[:, 1], beta).sum() / count
        scaler.scale(loss).backward()
        step_loss += loss.item()
    apply_step(model, optimizer, scheduler, scaler, max_grad_norm)
    return step_loss


def reference_logps(model, pairs: list[dict], batch_size: int, pad_token_id: int, device, autocast) -> None:
    """Give each pair the log-probabilities of its two answers under the model as loaded: DPO's
    frozen reference, computed once before training instead of kept as a second model."""
    import torch

    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            with autocast():
                chosen, rejected = pair_logps(model, batch, pad_token_id, device)
            for pair, c, r in zip(batch, chosen.tolist(), rejected.tolist()):
                pair["ref"] = (c, r)
    model.train()


def batches(items: list[dict], batch_size: int, rng: random.Random):
    """Endless mini-batches, reshuffled every epoch."""
    while True:
        order = items[:]
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield order[start:start + batch_size]


# -----------------------------------------------------------------------------
# model: loading, pad token, LoRA / QLoRA


def load_model_and_tokenizer(model_name_or_path: str, mode: str, dtype, gguf_file: str | None,
                             model_max_length: int, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if mode == "qlora":
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        extra["device_map"] = {"": device.index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_name_or_path, padding_side="right", model_max_length=model_max_length,
            **({"gguf_file": gguf_file} if gguf_file else {}))
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype, **extra)
    except OSError as exc:
        raise ConfigError(f"cannot load model {model_name_or_path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer of {model_name_or_path} has no EOS token, so responses cannot end")
    if tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"] != [tokenizer.eos_token_id]:
        # build_example appends EOS as text; read back as pieces, the model would learn to spell it.
        raise ConfigError(f"tokenizer of {model_name_or_path} does not read its EOS token {tokenizer.eos_token!r} "
                          f"back as one token; is split_special_tokens set in its tokenizer_config.json?")
    if not tokenizer.is_fast:  # only a fast tokenizer gives the character offsets the mask is placed by
        raise ConfigError(f"tokenizer of {model_name_or_path} is a slow (Python) tokenizer; the trainer needs "
                          f"a fast one: a tokenizer.json beside the model, or pip install sentencepiece to convert it")
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        resize_embeddings(model, tokenizer)
    return (model if mode == "qlora" else model.to(device)), tokenizer


def default_lora_targets(model) -> list[str]:
    """The attention projections to adapt, by the module names the architecture uses.

    q_proj,v_proj for Llama-like models (Llama, Mistral, Qwen, OPT, ...), query_key_value for
    Bloom, Falcon and GPT-NeoX, c_attn for GPT-2.
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for targets in (["q_proj", "v_proj"], ["query_key_value"], ["c_attn"]):
        if set(targets) <= names:
            return targets
    raise ConfigError("no known attention projection in this model; pass --lora_target_modules, e.g. q_proj,v_proj")


def add_lora(model, mode: str, r: int, alpha: int, dropout: float, target_modules, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if mode == "qlora":
        # Casts norms and the head to fp32 and, with checkpointing, lets gradients reach the
        # adapters through the frozen 4-bit layers.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if isinstance(target_modules, str):
        target_modules = target_modules.split(",")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=list(target_modules or default_lora_targets(model)))
    return get_peft_model(model, config)


def merge_lora(model, mode: str, reload_base):
    """The model with the adapter folded into its weights, ready to save as a plain model.

    A 4-bit base cannot take the update exactly, so for QLoRA the base is reloaded unquantised
    (through reload_base) and the trained adapter weights are applied to it.
    """
    if mode == "qlora":
        from peft import (
            get_peft_model,
            get_peft_model_state_dict,
            set_peft_model_state_dict,
        )

        adapter, config = get_peft_model_state_dict(model), model.peft_config["default"]
        model = get_peft_model(reload_base(), config)
        set_peft_model_state_dict(model, adapter)
    return model.merge_and_unload()


# -----------------------------------------------------------------------------
# training: loss, evaluation, the loop


def loss_sum(model, batch: dict):
    """Summed next-token cross-entropy over the labelled tokens of a batch."""
    import torch

    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
        ignore_index=IGNORE_INDEX, reduction="sum")


def apply_step(model, optimizer, scheduler, scaler, max_grad_norm: float) -> None:
    """The optimizer step after a step's gradients are summed: unscale, clip, step, schedule, clear."""
    import torch
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def count_targets(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def train_step(model, micro_batches: list[dict], optimizer, scheduler, scaler, autocast, max_grad_norm: float) -> float:
    """One optimizer step over the micro-batches of gradient accumulation; returns the loss."""
    # Every response token weighs the same, however the tokens fall across micro-batches.
    targets = max(sum(count_targets(batch) for batch in micro_batches), 1)
    step_loss = 0.0
    for batch in micro_batches:
        with autocast():
            loss = loss_sum(model, batch) / targets
        scaler.scale(loss).backward()
        step_loss += loss.item()
    apply_step(model, optimizer, scheduler, scaler, max_grad_norm)
    return step_loss


def evaluate(model, examples: list[dict], batch_size: int, pad_token_id: int, device, autocast) -> float:
    """Mean loss per response token over held-out examples."""
    import torch

    model.eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_token_id).items()}
            with autocast():
                total += loss_sum(model, batch).item()
            targets += count_targets(batch)
    model.train()
    return total / max(targets, 1)


def make_optimizer(model, learning_rate: float, weight_decay: float):
    import torch

    # Decay matrices and embeddings only; biases and norm weights (1-D) are left alone, as in
    # nanoGPT and transformers.Trainer.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


# -----------------------------------------------------------------------------
# main: flags named as in transformers.TrainingArguments


def main(model_name_or_path: str, data_path: str, output_dir: str, mode: str = "lora",
         learning_rate: float | None = None, num_train_epochs: float = 3.0, max_steps: int = -1,
         per_device_train_batch_size: int = 4, gradient_accumulation_steps: int = 8,
         warmup_ratio: float = 0.03, lr_scheduler_type: str = "cosine", weight_decay: float = 0.0,
         max_grad_norm: float = 1.0, seed: int = 42, model_max_length: int = 512,
         logging_steps: int = 10, eval_fraction: float = 0.0, eval_steps: int = 0,
         packing: bool = False, bf16: bool = False, fp16: bool = False,
         gradient_checkpointing: bool = False, lora_r: int = 8, lora_alpha: int = 16,
         lora_dropout: float = 0.05, lora_target_modules: str | None = None, merge: bool = False,
         prompt_with_input: str | None = None, prompt_no_input: str | None = None,
         gguf_file: str | None = None, method: str = "sft", beta: float = 0.1):
    """Fine-tune a causal LM on instruction records; writes the model or adapter to output_dir.

    Args:
        model_name_or_path: a local model directory (or a hub id where the hub can be reached).
        data_path: regen.json, generated.jsonl, an Alpaca JSON list or JSONL, or a messages JSONL.
        output_dir: where the model (full, --merge) or the LoRA adapter goes, with the tokenizer,
            train_args.json and loss_log.jsonl.
        mode: full, lora, or qlora (4-bit NF4 base with double quantisation; needs CUDA and bitsandbytes).
        learning_rate: peak rate; default 2e-5 for full (Alpaca's) and 2e-4 for lora/qlora.
        num_train_epochs: passes over the training records, used when max_steps is -1.
        max_steps: optimizer steps to take; -1 means as many as num_train_epochs need.
        per_device_train_batch_size: examples (or packed blocks) per micro-batch.
        gradient_accumulation_steps: micro-batches per optimizer step.
        warmup_ratio: share of the steps spent warming the rate up from 0.
        lr_scheduler_type: any transformers scheduler name: cosine, linear, constant, ...
        weight_decay: AdamW decay on matrices and embeddings.
        max_grad_norm: gradient clipping norm.
        seed: seeds the shuffle, the eval split and the weight initialisation.
        model_max_length: tokens per example (or per packed block); longer ones are cut.
        logging_steps: steps between lines of loss_log.jsonl.
        eval_fraction: share of the records held out for an eval loss, computed at the end.
        eval_steps: also compute the eval loss every this many steps (0: only at the end).
        packing: pack several examples into each model_max_length block.
        bf16: bfloat16 compute, and a bf16 frozen base in lora mode (qlora computes in bf16 unless --fp16).
        fp16: float16 compute with loss scaling (and fp16 frozen weights in lora mode).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_target_modules: comma-separated module names; default by architecture
            (q_proj,v_proj for Llama-like, query_key_value for Bloom, c_attn for GPT-2).
        merge: with lora/qlora, save the base model with the adapter merged in instead of the adapter.
        prompt_with_input: your own template file with {instruction} and {input}.
        prompt_no_input: your own template file with {instruction}.
        gguf_file: a GGUF file inside model_name_or_path to load (dequantised) instead of safetensors.
        method: sft (supervised, on instruction or chat records) or dpo (direct preference optimisation
            on preference pairs, against the model as loaded as the frozen reference).
        beta: with --method dpo, how far the model may move from the reference (DPO's beta).
    """
    args = dict(locals())
    check_flags(args)
    dpo = method == "dpo"
    records = load_pairs(data_path) if dpo else load_records(data_path)
    templates = load_training_templates(prompt_with_input, prompt_no_input)
    if not all(_importable(name) for name in ("torch", "transformers", "peft")):
        raise ConfigError(f"training needs torch, transformers and peft: {INSTALL_HINT}")
    check_model_path(model_name_or_path, gguf_file)
    import torch
    from transformers import get_scheduler

    # ---- device and precision
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if mode == "qlora":
        _check_qlora(device)
    compute_dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    if mode == "qlora" and not fp16:
        compute_dtype = torch.bfloat16  # 4-bit weights are unpacked to 16 bits for each matmul
    if compute_dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU has no bfloat16 support; use --fp16")
    # Trained weights stay in fp32 (autocast does the low-precision compute); a frozen base can
    # live in 16 bits and halve its memory.
    load_dtype = torch.float32 if mode == "full" else compute_dtype

    def autocast():
        return torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)

    # ---- data
    rng = random.Random(seed)
    torch.manual_seed(seed)
    rng.shuffle(records)
    held_out = round(len(records) * eval_fraction)
    model, tokenizer = load_model_and_tokenizer(model_name_or_path, mode, load_dtype, gguf_file, model_max_length, device)
    if dpo:
        train_examples = [e for e in (build_pair(tokenizer, r, templates, model_max_length) for r in records) if e]
        eval_examples, dropped = [], len(records) - len(train_examples)
        reference_logps(model, train_examples, per_device_train_batch_size, tokenizer.pad_token_id, device, autocast)
    else:
        train_examples, eval_examples, dropped = split_examples(tokenizer, records, templates, model_max_length, held_out)
    if not train_examples:
        raise ConfigError(f"no training example has a response within model_max_length={model_max_length}")
    train_items = pack(train_examples, model_max_length) if packing else train_examples
    micro_per_epoch = math.ceil(len(train_items) / per_device_train_batch_size)
    total_steps = max_steps if max_steps > 0 else math.ceil(num_train_epochs * micro_per_epoch / gradient_accumulation_steps)
    _say(f"{len(records)} records: {len(train_examples)} to train on, {len(eval_examples)} held out, "
         f"{dropped} dropped (prompt fills model_max_length={model_max_length})"
         + (f"; packed into {len(train_items)} blocks" if packing else ""))

    # ---- model
    if gradient_checkpointing and mode != "qlora":
        if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode != "full":
        model = add_lora(model, mode, lora_r, lora_alpha, lora_dropout, lora_target_modules, gradient_checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _say(f"{mode}: {trainable:,} trainable parameters on {device.type}, {total_steps} steps")
    model.train()

    # ---- optimizer and schedule
    if learning_rate is None:  # Alpaca's for full SFT; DPO moves a trained model, and wants far less
        learning_rate = (5e-6 if mode == "full" else 5e-5) if dpo else (2e-5 if mode == "full" else 2e-4)
    optimizer = make_optimizer(model, learning_rate, weight_decay)
    scheduler = get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=math.ceil(warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)  # fp16 gradients underflow without it

    # ---- training loop
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_args.json").write_text(json.dumps(args, indent=2) + "\n")
    log = (output / "loss_log.jsonl").open("w")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stream = batches(train_items, per_device_train_batch_size, rng)
    losses, tokens, start = [], 0, time.perf_counter()
    progress = _progress(total_steps)
    for step in range(1, total_steps + 1):
        raw = [next(stream) for _ in range(gradient_accumulation_steps)]
        if dpo:
            tokens += sum(len(pair[side]["input_ids"]) for batch in raw for pair in batch for side in ("chosen", "rejected"))
            step_loss = dpo_step(model, raw, optimizer, scheduler, scaler, autocast, max_grad_norm, beta=beta,
                                 pad_token_id=tokenizer.pad_token_id, device=device)
        else:
            tokens += sum(len(example["input_ids"]) for batch in raw for example in batch)  # padding not counted
            micro_batches = [{k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id).items()} for batch in raw]
            step_loss = train_step(model, micro_batches, optimizer, scheduler, scaler, autocast, max_grad_norm)
        losses.append(step_loss)
        progress.set_postfix(loss=f"{step_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        progress.update()
        if step % logging_steps == 0 or step == total_steps:
            window = losses[-logging_steps:]
            _log(log, step=step, loss=sum(window) / len(window), learning_rate=scheduler.get_last_lr()[0],
                 tokens=tokens, seconds=round(time.perf_counter() - start, 3))
        if eval_examples and ((eval_steps and step % eval_steps == 0) or step == total_steps):
            _log(log, step=step, eval_loss=evaluate(model, eval_examples, per_device_train_batch_size,
                                                    tokenizer.pad_token_id, device, autocast))
    progress.close()
    seconds = time.perf_counter() - start
    summary = {"first_loss": losses[0], "last_loss": losses[-1], "tokens_per_second": tokens / seconds}
    if device.type == "cuda":
        summary["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    _log(log, **summary)
    log.close()

    # ---- save
    if merge:
        model = merge_lora(model, mode, lambda: _reload_base(model_name_or_path, compute_dtype, gguf_file, tokenizer))
    if mode == "full" or merge:
        model.save_pretrained(output)
    else:
        # The embeddings are frozen in LoRA, and resize_embeddings rebuilds a new pad row.
        model.save_pretrained(output, save_embedding_layers=False)
    tokenizer.save_pretrained(output)
    _say(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {seconds:.0f} s "
         f"({summary['tokens_per_second']:,.0f} tokens/s); saved to {output}")


# What each numeric flag must be, checked before anything is loaded: a rate of 0 or a rank of 0
# would otherwise train nothing, or fail deep inside peft with a traceback.
FLAG_RULES = {
    "learning_rate": (lambda v: v is None or v > 0, "a positive number (leave it out for the default)"),
    "max_steps": (lambda v: v == -1 or v >= 1, "a positive whole number, or -1 to train for --num_train_epochs"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "max_grad_norm": (lambda v: v > 0, "a positive number"),
    "eval_fraction": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "eval_steps": (lambda v: v >= 0, "0 (evaluate at the end only) or more"),
    "lora_dropout": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "beta": (lambda v: v > 0, "a positive number"),
    **{name: (lambda v: v >= 1, "a positive whole number") for name in (
        "model_max_length", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
        "lora_r", "lora_alpha")},
}


def check_flags(args: dict) -> None:
    """Refuse a flag value that cannot work, with one line naming the flag.

    Example: {"learning_rate": 0, ...} -> ConfigError("--learning_rate must be a positive number ... (got 0)")
    """
    if args["mode"] not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)} (got {args['mode']!r})")
    if args["bf16"] and args["fp16"]:
        raise ConfigError("choose one of --bf16 and --fp16")
    if args["merge"] and args["mode"] == "full":
        raise ConfigError("--merge applies to lora and qlora; full mode already saves a whole model")
    if args["method"] not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)} (got {args['method']!r})")
    if args["method"] == "dpo" and (args["packing"] or args["eval_fraction"]):
        raise ConfigError("--packing and --eval_fraction are for --method sft; DPO scores whole answers side by side")
    if args["lr_scheduler_type"] not in SCHEDULERS:
        raise ConfigError(f"--lr_scheduler_type must be one of {', '.join(SCHEDULERS)} (got {args['lr_scheduler_type']!r})")
    for name, (ok, what) in FLAG_RULES.items():
        if not ok(args[name]):
            raise ConfigError(f"--{name} must be {what} (got {args[name]!r})")
    if args["max_steps"] == -1 and not args["num_train_epochs"] > 0:
        raise ConfigError(f"--num_train_epochs must be a positive number when --max_steps is -1 (got {args['num_train_epochs']!r})")
    # the model and its tokenizer are saved there: never over the base model, or in a place that fails after training
    check_outputs(directories=[("--output_dir", args["output_dir"])],
                  inputs=[("--model_name_or_path", args["model_name_or_path"]), ("--data_path", args["data_path"])])


def check_model_path(model_name_or_path: str, gguf_file: str | None) -> None:
    """Refuse at once a model that is neither a local directory nor a possible hub id.

    transformers would take a missing path for a hub id and fail only after its retries.
    Example: "./models/llama" (missing) -> ConfigError; "meta-llama/Llama-2-7b-hf" -> left to transformers
    """
    from huggingface_hub.utils import validate_repo_id

    path = Path(model_name_or_path).expanduser()
    if path.is_file():
        raise ConfigError(f"model_name_or_path {model_name_or_path} is a file; pass its directory "
                          f"(and --gguf_file NAME for a GGUF file)")
    if path.is_dir():
        if gguf_file and not (path / gguf_file).is_file():
            raise ConfigError(f"gguf_file {gguf_file}: no such file in {model_name_or_path}")
        return
    path_like = model_name_or_path.startswith((".", "~"))
    try:
        validate_repo_id(model_name_or_path)  # at most one "/", no "..": "org/name"
    except ValueError:
        path_like = True
    if path_like:
        raise ConfigError(f"model_name_or_path {model_name_or_path}: no such directory")


def _check_qlora(device) -> None:
    if device.type != "cuda":
        raise ConfigError("--mode qlora quantises the model to 4 bits with bitsandbytes, which needs a CUDA GPU "
                          "and none is visible here; use --mode lora or --mode full on this machine")
    if not _importable("bitsandbytes"):
        raise ConfigError("--mode qlora needs bitsandbytes: pip install bitsandbytes")


def _reload_base(model_name_or_path, dtype, gguf_file, tokenizer):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype,
                                                **({"gguf_file": gguf_file} if gguf_file else {}))
    resize_embeddings(base, tokenizer)
    return base


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", file=sys.stderr)


def _log(file, **fields) -> None:
    file.write(json.dumps(fields) + "\n")
    file.flush()


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def cli(argv=None) -> None:
    run(main, argv, name="self_instruct.train")


if __name__ == "__main__":
    cli()
