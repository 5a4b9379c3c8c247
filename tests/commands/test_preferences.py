"""Preference pairs: several answers per instruction, rated side by side by a server's model; the
best and worst kept by margin, the rest rejected with reasons; reruns free, budgets held."""
import json
import re

import pytest

from fake_openai import FakeOpenAI
from self_instruct.io.jsonl import read_jsonl
from self_instruct.pipelines.preferences import Draw, draws
from self_instruct.preferences import cli, preferences_file

RECORDS = [{"instruction": f"Explain topic {w}.", "input": "", "output": "old answer", "metadata": {"source": f"{w}.md"}}
           for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")]


def write_input(tmp_path, records=RECORDS):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def answer_and_rate(scores_for):
    """The server's models: an answer names its draw (temperature and seed, as the request says);
    the rater scores the answers it is shown with scores_for(topic, answers)."""
    def reply(prompt, body):
        if "You are comparing candidate responses" in prompt:
            topic = re.search(r"Explain topic (\w+)\.", prompt).group(1)
            answers = re.findall(r"### Response \d+\n(.*)", prompt)
            return "Here you go:\n" + json.dumps([{"index": i, "score": s, "reason": "because"}
                                                  for i, s in enumerate(scores_for(topic, answers), 1)])
        return f"An answer by {body['model']} at {body.get('temperature')} (draw {body.get('seed')})."
    return reply


def test_the_answer_plan_alternates_temperatures_and_the_rival():
    assert draws(4, [0.7, 1.2], rival=True) == (Draw(None, 0.7, 0), Draw("rival", 1.2, 1), Draw(None, 0.7, 2),
                                                Draw("rival", 1.2, 3))


def test_pairs_keep_the_best_and_worst_by_margin_and_reject_the_rest(fake_server, tmp_path, capsys):
    ratings = {"alpha": [3, 9, 5], "beta": [6, 6, 6], "gamma": [7, 6, 7], "delta": [6, 5], "epsilon": [8, 1, 4],
               "zeta": None}

    def scores_for(topic, answers):
        given = ratings[topic]
        return [11] * len(answers) if given is None else given[:len(answers)] + [given[-1]] * (len(answers) - len(given))
    fake_server.reply_fn = answer_and_rate(scores_for)
    out = tmp_path / "pairs.jsonl"
    cli([str(write_input(tmp_path)), "--output", str(out), "--samples", "3", "--min_margin", "2", "--base_url",
         fake_server.base_url, "--model_name", "m", "--quiet"])
    pairs = read_jsonl(out)
    assert [p["instruction"] for p in pairs] == ["Explain topic alpha.", "Explain topic epsilon."]
    alpha, epsilon = pairs
    assert alpha["output"].endswith("(draw 1).") and alpha["metadata"]["rejected"].endswith("(draw 0).")
    assert alpha["metadata"]["preference"]["scores"] == [3, 9, 5] and alpha["metadata"]["preference"]["margin"] == 6
    assert epsilon["output"].endswith("(draw 0).") and epsilon["metadata"]["rejected"].endswith("(draw 1).")
    assert alpha["metadata"]["source"] == "alpha.md" and alpha["provenance"]["model"] == "m"
    rejected = {r["instruction"]: r["reason"] for r in read_jsonl(tmp_path / "pairs.jsonl.run" / "rejected.jsonl")}
    assert rejected == {"Explain topic beta.": "tie", "Explain topic gamma.": "small_margin",
                        "Explain topic delta.": "small_margin", "Explain topic zeta.": "unscored"}
    # 3 answers and a rating a record, every answer asked at its own temperature and seed
    answers = [b for b in fake_server.requests if "comparing candidate" not in json.dumps(b)]
    assert len(fake_server.requests) == 6 * 4 and {(b["temperature"], b["seed"]) for b in answers} == {
        (0.7, 0), (1.2, 1), (0.7, 2)}
    ratings_asked = [b for b in fake_server.requests if "comparing candidate" in json.dumps(b)]
    assert all(b["temperature"] == 0.0 for b in ratings_asked)
    # the rerun finds every record done and asks nothing
    sent = len(fake_server.requests)
    cli([str(tmp_path / "data.json"), "--output", str(out), "--samples", "3", "--min_margin", "2", "--base_url",
         fake_server.base_url, "--model_name", "m", "--quiet"])
    assert len(fake_server.requests) == sent and read_jsonl(out) == pairs
    assert "2 preference pairs from 6 instructions" in capsys.readouterr().err


def test_a_rival_answers_every_other_draw_and_a_separate_rater_scores(tmp_path):
    teacher, rival, rater = (FakeOpenAI(seed=i).start() for i in range(3))
    try:
        for server in (teacher, rival):
            server.reply_fn = answer_and_rate(None)
        rater.reply_fn = answer_and_rate(lambda topic, answers: [9 if "by strong" in a else 2 for a in answers])
        result = preferences_file(write_input(tmp_path, RECORDS[:3]), str(tmp_path / "pairs.json"), samples=2,
                                  base_url=teacher.base_url, model_name="weak", rival_model="strong",
                                  rival_base_url=rival.base_url, judge_model="judge", judge_base_url=rater.base_url,
                                  quiet=True)
    finally:
        for server in (teacher, rival, rater):
            server.stop()
    assert result.outcome.stopped_by == "done" and len(result.pairs) == 3
    assert all("by strong" in p["output"] and "by weak" in p["metadata"]["rejected"] for p in result.pairs)
    assert len(teacher.requests) == len(rival.requests) == len(rater.requests) == 3
    assert {b["model"] for b in rater.requests} == {"judge"}
    config = json.loads((tmp_path / "pairs.json.run" / "run.json").read_text())
    assert config["rival_model"] == "strong" and config["judge_model"] == "judge"


def test_max_requests_holds_and_a_rerun_goes_on(fake_server, tmp_path):
    fake_server.reply_fn = answer_and_rate(lambda topic, answers: list(range(1, len(answers) + 1)))
    args = [str(write_input(tmp_path)), "--output", str(tmp_path / "pairs.json"), "--samples", "2",
            "--base_url", fake_server.base_url, "--model_name", "m", "--quiet"]
    cli(args + ["--max_requests", "7"])
    assert len(fake_server.requests) <= 7 and not (tmp_path / "pairs.json").exists()
    cli(args + ["--max_requests", "18"])
    assert len(fake_server.requests) == 18 and len(json.loads((tmp_path / "pairs.json").read_text())) == 6


@pytest.mark.parametrize("flags, message", [
    (["--samples", "1"], "--samples must be 2 or more"),
    (["--temperatures", "0.7,hot"], "--temperatures must be numbers from 0 to 2"),
    (["--min_margin", "0"], "--min_margin must be above 0"),
])
def test_bad_flags_are_one_line_and_ask_nothing(fake_server, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        cli([str(write_input(tmp_path)), "--output", str(tmp_path / "p.json"), "--base_url", fake_server.base_url,
             *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err and fake_server.requests == []


def test_the_pairs_export_as_trl_preference_rows_text_or_conversational(fake_server, tmp_path, capsys):
    from self_instruct.export import cli as export

    fake_server.reply_fn = answer_and_rate(lambda topic, answers: [8, 2])
    pairs = tmp_path / "pairs.jsonl"
    cli([str(write_input(tmp_path, RECORDS[:2])), "--output", str(pairs), "--base_url", fake_server.base_url,
         "--model_name", "m", "--quiet"])
    export([str(pairs), "--format", "preference", "--output", str(tmp_path / "dpo.jsonl")])
    rows = read_jsonl(tmp_path / "dpo.jsonl")
    assert [(r["prompt"], r["chosen"].endswith("(draw 0)."), r["rejected"].endswith("(draw 1).")) for r in rows] == [
        ("Explain topic alpha.", True, True), ("Explain topic beta.", True, True)]
    assert rows[0]["metadata"]["source"] == "alpha.md" and rows[0]["id"]
    export([str(pairs), "--format", "preference", "--chat", "--system", "Be brief.", "--output", str(tmp_path / "c.jsonl")])
    chat = read_jsonl(tmp_path / "c.jsonl")[0]
    assert chat["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain topic alpha."}]
    assert chat["chosen"][0]["role"] == chat["rejected"][0]["role"] == "assistant"
    with pytest.raises(SystemExit) as exc:  # records that are not pairs
        export([str(write_input(tmp_path, RECORDS[:1])), "--format", "preference", "--output", str(tmp_path / "x.jsonl")])
    assert exc.value.code == 2 and "no metadata.rejected" in capsys.readouterr().err


@pytest.mark.slow
def test_trl_dpo_trainer_takes_a_step_on_the_export(fake_server, tmp_path):
    """TRL's DPOTrainer reads our preference export as it is and trains on it (a tiny Llama built
    here; nothing comes from a hub)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from self_instruct.export import cli as export

    fake_server.reply_fn = answer_and_rate(lambda topic, answers: [8, 2])
    cli([str(write_input(tmp_path)), "--output", str(tmp_path / "pairs.jsonl"), "--base_url", fake_server.base_url,
         "--model_name", "m", "--quiet"])
    export([str(tmp_path / "pairs.jsonl"), "--format", "preference", "--output", str(tmp_path / "dpo.jsonl")])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([(tmp_path / "dpo.jsonl").read_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>")
    dataset = datasets.load_dataset("json", data_files=str(tmp_path / "dpo.jsonl"), split="train")
    args = trl.DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2,
                         learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                         dataloader_num_workers=0, beta=0.1)
    trainer = trl.DPOTrainer(model=tiny_llama(tokenizer), ref_model=tiny_llama(tokenizer), args=args,
                             train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0


def test_the_report_draws_the_preference_margins(fake_server, tmp_path):
    pytest.importorskip("matplotlib")
    from self_instruct.report import write_report

    fake_server.reply_fn = answer_and_rate(lambda topic, answers: [9, 2] if topic < "d" else [6, 4])
    cli([str(write_input(tmp_path)), "--output", str(tmp_path / "pairs.json"), "--base_url", fake_server.base_url,
         "--model_name", "m", "--quiet"])
    page = write_report(tmp_path / "pairs.json.run").read_text()
    section = page.split("<h2>Preference margins</h2>", 1)[1].split("<h2>", 1)[0]
    assert section.startswith("<p>6 pairs; mean margin 3.67</p>") and "data:image/png;base64," in section
