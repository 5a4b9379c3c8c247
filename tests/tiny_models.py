"""A tiny Llama built from a config, and a chat template, for the trainer, evaluate, export and
select tests: nothing comes from a model hub."""
import json
import random
from pathlib import Path

ALPACA_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "alpaca_data_5000_sample.json"
WORDS = "river stone apple quiet number seven garden light paper window music table orange cloud".split()

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def tiny_llama(tokenizer, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # initializer_range 0.15 rather than 0.02: LoRA leaves the random head and norms frozen, and
    # at 0.02 their outputs are too flat for any adapter to express a confident prediction.
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         initializer_range=0.15,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


def tiny_model_dir(path, texts, seed=0):
    """A tiny Llama and a byte-level BPE trained on `texts` (with BOS and EOS), saved in `path`
    as a transformers model directory; returns the path."""
    import string

    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([string.printable, *texts],
                            trainers.BpeTrainer(vocab_size=256, min_frequency=2, special_tokens=["<s>", "</s>"]))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tiny_llama(tokenizer, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def short_records(count, max_chars=300):
    """Alpaca records short enough for the tiny model's 512 positions (from the shared sample), or made-up ones."""
    if ALPACA_SAMPLE.is_file():
        records = [r for r in json.loads(ALPACA_SAMPLE.read_text()) if sum(map(len, r.values())) <= max_chars and r["output"]]
        return records[:count]
    rng = random.Random(0)
    return [{"instruction": f"Describe the {rng.choice(WORDS)} and the {rng.choice(WORDS)}.", "input": "",
             "output": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))} for _ in range(count)]
