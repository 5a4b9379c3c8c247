"""--batch: requests go through the Batch API of a real HTTP server (tests/fake_batches.py), with
the same budgets, ledger, reply cache and judge as direct requests, and a batch is never made twice."""
import hashlib
import json
import re

import pytest

from fake_batches import FakeBatches, verdicts
from self_instruct.engine.ledger import read_spend
from self_instruct.engine.prices import BATCH_PRICES
from self_instruct.documents import cli as documents_cli
from self_instruct.evolve import evolve_file
from self_instruct.io.jsonl import read_jsonl
from self_instruct.score import cli, score_file

WORDS = ("one", "two", "three", "four", "five", "six", "seven")
RECORDS = [{"instruction": f"Task number {w}.", "input": "", "output": f"Answer {w}."} for w in WORDS]
FAST = dict(batch=True, batch_poll=0.01, batch_poll_max=0.02, quiet=True, model_name="gpt-4o-mini")


@pytest.fixture
def server():
    server = FakeBatches().start()
    server.reply_fn = verdicts
    yield server
    server.stop()


def write_input(tmp_path, records=RECORDS):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def score(server, tmp_path, **options):
    return score_file(write_input(tmp_path), str(tmp_path / "scored.jsonl"), records_per_request=2,
                      base_url=server.base_url, **{**FAST, **options})


def ledger_of(result):
    return read_jsonl(result.output_dir / "ledger.jsonl")


def test_score_rates_every_record_through_one_batch_at_the_batch_price(server, tmp_path):
    result = score(server, tmp_path)
    assert result.stopped_by == "done"
    assert server.creations == 1 and server.uploads == 1 and server.requests == []  # nothing sent directly
    assert len(server.batch_requests) == 4  # 7 records, 2 a request
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert [r["instruction"] for r in scored] == [r["instruction"] for r in RECORDS]
    assert all(r["metadata"]["score"] == 4 for r in scored)
    # every request settled at the table's batch rate for its usage, half the list price
    prompt_rate, completion_rate = BATCH_PRICES["gpt-4o-mini"]
    done = [line for line in ledger_of(result) if line["event"] == "done"]
    assert len(done) == 4
    for line in done:
        assert line["cost"] == pytest.approx((line["prompt_tokens"] * prompt_rate + line["completion_tokens"] * completion_rate) / 1e6)
    spend, _ = read_spend(result.output_dir / "ledger.jsonl")  # what a resumed run counts as spent
    assert spend.cost == pytest.approx(sum(line["cost"] for line in done)) and spend.reserved_tokens == 0
    batches = read_jsonl(result.output_dir / "batches.jsonl")
    assert [b["event"] for b in batches] == ["intent", "created", "ended"]
    assert batches[2]["status"] == "completed" and batches[2]["answered"] == 4
    # the same command again sends nothing and makes no batch
    cli([str(tmp_path / "data.json"), "--output", str(tmp_path / "scored.jsonl"), "--records_per_request", "2",
         "--base_url", server.base_url, "--model_name", "gpt-4o-mini", "--batch", "--batch_poll", "0.01", "--quiet"])
    assert server.creations == 1 and server.requests == []


@pytest.mark.parametrize("plan", ["partial", "expired", "failed"])
def test_requests_a_batch_did_not_answer_are_sent_again_as_ordinary_requests(server, tmp_path, plan):
    server.batch_plan = [plan]
    result = score(server, tmp_path, batch_retry="requests")
    assert result.stopped_by == "done" and len(result.kept) == 7
    unanswered = {"partial": 2, "expired": 2, "failed": 4}[plan]
    assert server.creations == 1 and len(server.requests) == unanswered
    lines = ledger_of(result)
    failed = [line for line in lines if line["event"] == "done" and "error" in line]
    assert len(failed) == unanswered and all(line["cost"] == 0 for line in failed)
    assert {line["faults"][-1] for line in failed} == {"batch_expired" if plan == "expired" else "batch_failed"}
    # the retries are requests too, at the ordinary price
    assert sum(line["event"] == "send" for line in lines) == 4 + unanswered


@pytest.mark.parametrize("plan", ["partial", "expired", "failed"])
def test_requests_a_batch_did_not_answer_go_in_the_next_batch(server, tmp_path, plan):
    server.batch_plan = [plan]
    result = score(server, tmp_path, batch_retry="batch")
    assert result.stopped_by == "done" and len(result.kept) == 7
    assert server.creations == 2 and server.requests == []
    intents = [b for b in read_jsonl(result.output_dir / "batches.jsonl") if b["event"] == "intent"]
    assert [len(i["requests"]) for i in intents] == [4, {"partial": 2, "expired": 2, "failed": 4}[plan]]


def test_a_batch_that_keeps_failing_counts_its_requests_failed(server, tmp_path):
    server.batch_plan = ["failed"] * 3
    result = score(server, tmp_path, batch_retry="batch")
    assert server.creations == 3 and server.requests == []  # BATCH_TRIES batches, then failed as any request
    rejected = read_jsonl(result.output_dir / "rejected.jsonl")
    assert rejected and all(r["reason"] == "request_failed" for r in rejected)


def test_a_lost_create_reply_adopts_the_batch_the_server_made(server, tmp_path):
    server.create_faults = ["lost"]
    result = score(server, tmp_path)
    assert result.stopped_by == "done" and len(result.kept) == 7
    assert server.creations == 1 and server.requests == []


def test_max_requests_holds_and_a_rerun_batches_the_rest(server, tmp_path):
    result = score(server, tmp_path, max_requests=3)
    assert result.stopped_by == "max_requests"
    assert server.creations == 1 and len(server.batch_requests) == 3
    assert sum(line["event"] == "send" for line in ledger_of(result)) == 3
    result = score(server, tmp_path, max_requests=4)
    assert result.stopped_by == "done" and len(result.kept) == 7
    assert server.creations == 2 and len(server.batch_requests) == 4


def test_max_cost_holds_at_the_batch_price(server, tmp_path):
    # each request reserves its prompt's bound and max_tokens; at half price twice as many fit
    result = score(server, tmp_path, max_cost=0.00022)
    assert result.stopped_by == "max_cost"
    sends = [line for line in ledger_of(result) if line["event"] == "send"]
    assert len(sends) == 2 and sum(line["cost"] for line in sends) <= 0.00022
    assert server.creations == 1 and len(server.batch_requests) == 2
    assert read_spend(result.output_dir / "ledger.jsonl")[0].cost <= 0.00022
    # the same cap at the list price, one request at a time, holds one request
    (tmp_path / "direct").mkdir()
    direct = score(server, tmp_path / "direct", max_cost=0.00022, batch=False)
    assert direct.stopped_by == "max_cost" and len(server.requests) == 1


def test_a_server_without_the_batch_api_stops_the_run_with_one_line(server, tmp_path, capsys):
    server.offers_batches = False
    with pytest.raises(SystemExit) as stopped:
        cli([str(write_input(tmp_path)), "--output", str(tmp_path / "scored.jsonl"), "--base_url", server.base_url,
             "--batch", "--batch_poll", "0.01", "--quiet"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused to upload the batch input file (404" in err[0] and "run without --batch" in err[0]
    assert not (tmp_path / "scored.jsonl").exists()
    lines = read_jsonl(tmp_path / "scored.jsonl.run" / "ledger.jsonl")
    assert sum(line["event"] == "done" for line in lines) == sum(line["event"] == "send" for line in lines)
    assert all(line["cost"] == 0 for line in lines if line["event"] == "done")
    assert server.requests == [] and server.creations == 0


def test_evolve_asks_in_turn_one_batch_per_step(server, tmp_path):
    def growing(prompt, body):
        m = re.search(r"Task to (?:change|start from):\n(.*?)\n\nReply with", prompt, re.S)
        if m is None:
            return f"An answer to: {prompt.strip()}"
        return json.dumps({"instruction": m.group(1) + " Then justify every step with a worked example.", "input": ""})
    server.reply_fn = growing
    result = evolve_file(write_input(tmp_path, RECORDS[:3]), str(tmp_path / "evolved.json"), rounds=1,
                         base_url=server.base_url, similarity_threshold=1.0, no_change_threshold=1.0, **FAST)
    assert result.stopped_by == "done"
    evolved = json.loads((tmp_path / "evolved.json").read_text())
    assert len(evolved) == 3 and all(r["output"] == f"An answer to: {r['instruction']}" for r in evolved)
    # the rewrites of every parent in one batch, then their answers in another
    assert server.creations == 2 and server.requests == [] and len(server.batch_requests) == 6


ORCHARD = """# Orchard notes

## Pruning

Prune apple trees in late winter, while they are dormant and the cuts heal before the sap rises. Remove dead wood first, then branches that cross or rub. Open the centre so light reaches every fruit spur.

Cut just above an outward-facing bud at a slight angle, so water runs off the wound. Never remove more than a quarter of the canopy in one year.

## Harvest

Pick apples when they come away with a gentle twist, and store only sound fruit in a cool, dark and airy place.
"""


def test_documents_asks_of_every_chunk_go_in_one_batch(server, tmp_path):
    """Paragraph backtranslation asks for every paragraph of a chunk at once: each of those asks
    waits in the same batch, whatever chunk it comes from."""
    pytest.importorskip("markdown_it", reason="reading Markdown needs the [docs] extra")
    server.reply_fn = lambda prompt, body: json.dumps(
        {"instruction": f"Explain the gardening passage coded {hashlib.sha256(prompt.encode()).hexdigest()[:6]} in plain words."})
    (tmp_path / "orchard.md").write_text(ORCHARD, encoding="utf-8")
    documents_cli([str(tmp_path / "orchard.md"), "--mode", "backtranslate", "--backtranslate_unit", "paragraph",
                   "--min_paragraph_words", "20", "--output_dir", str(tmp_path / "out"), "--base_url", server.base_url,
                   "--no_report", "--batch", "--batch_poll", "0.01", "--quiet"])
    generated = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert len(generated) == 3 and [r["output"].split()[0] for r in generated] == ["Prune", "Cut", "Pick"]
    assert server.creations == 1 and len(server.batch_requests) == 3 and server.requests == []


def test_batch_prices_come_from_the_table_or_the_discount_flag():
    from types import SimpleNamespace as Options

    from self_instruct.engine.prices import Price, find_batch_price, find_price
    listed = find_price("gpt-4o-2024-08-06", None, None)
    assert find_batch_price("gpt-4o-2024-08-06", listed, Options()) == Price(*BATCH_PRICES["gpt-4o"]) == Price(1.25, 5.0)
    assert find_batch_price("gpt-4o", listed, Options(batch_discount=0.4)) == Price(1.0, 4.0)
    # a price from flags is the user's: no discount is assumed unless stated
    own = Price(3.0, 6.0)
    assert find_batch_price("gpt-4o", own, Options(price_prompt=3.0, price_completion=6.0)) == own
    assert find_batch_price("my-model", own, Options(batch_discount=0.5)) == Price(1.5, 3.0)
    assert find_batch_price("my-model", None, Options(batch_discount=0.5)) is None


def test_documents_dry_run_shows_what_batch_saves(tmp_path, capsys):
    pytest.importorskip("markdown_it", reason="reading Markdown needs the [docs] extra")
    from self_instruct.documents import DocumentsConfig, dry_run

    (tmp_path / "orchard.md").write_text(ORCHARD, encoding="utf-8")
    _, bound = dry_run(DocumentsConfig(paths=(str(tmp_path / "orchard.md"),), output_dir=str(tmp_path / "out"),
                                       base_url="http://127.0.0.1:9/v1", model_name="gpt-4o-mini"))
    full = float(re.search(r"^at most: .*\$([\d.]+)$", bound, re.M).group(1))
    batched, saved = map(float, re.search(r"^through --batch: at most \$([\d.]+), \$([\d.]+) less", bound, re.M).groups())
    assert batched == pytest.approx(full / 2, abs=1e-4) and saved == pytest.approx(full / 2, abs=1e-4)
    assert not (tmp_path / "out").exists()


def test_generate_reaches_its_target_through_batches(tmp_path):
    from self_instruct.generate import generate

    server = FakeBatches(synthetic=True).start()
    try:
        result = generate(str(tmp_path / "out"), num_instructions_to_generate=30, num_tasks=8, request_batch_size=2,
                          base_url=server.base_url, judge=True, **FAST)
    finally:
        server.stop()
    assert result.stopped_by == "target" and len(read_jsonl(tmp_path / "out" / "generated.jsonl")) == 30
    assert server.requests == []  # the run's requests and its --judge stage's, all in batches
    intents = [b for b in read_jsonl(tmp_path / "out" / "batches.jsonl") if b["event"] == "intent"]
    [judged] = [b for b in read_jsonl(tmp_path / "out" / "score" / "batches.jsonl") if b["event"] == "intent"]
    assert len(judged["requests"]) == 6  # 30 records, 5 a request
    assert server.creations == len(intents) + 1
    assert sum(len(i["requests"]) for i in intents) + 6 == len(server.batch_requests)


def test_a_refusal_after_the_batch_was_made_leaves_it_for_the_rerun(server, tmp_path, capsys):
    server.poll_faults = ["404"]
    args = [str(write_input(tmp_path)), "--output", str(tmp_path / "scored.jsonl"), "--base_url", server.base_url,
            "--model_name", "gpt-4o-mini", "--batch", "--batch_poll", "0.01", "--quiet"]
    with pytest.raises(SystemExit) as stopped:
        cli(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "refused to poll batch" in err[-1]  # the batch's line, then the refusal's
    record = tmp_path / "scored.jsonl.run" / "batches.jsonl"
    assert [b["event"] for b in read_jsonl(record)] == ["intent", "created"]  # paid for: kept for the rerun
    cli(args)
    assert server.creations == 1 and server.requests == [] and len(read_jsonl(tmp_path / "scored.jsonl")) == 7
    assert [b["event"] for b in read_jsonl(record)] == ["intent", "created", "ended"]


def test_a_server_that_cannot_list_batches_still_takes_them(server, tmp_path):
    server.lists_batches = False  # a fresh batch needs no look: its tag is new
    result = score(server, tmp_path)
    assert result.stopped_by == "done" and len(result.kept) == 7 and server.creations == 1


def test_generate_dry_run_shows_what_batch_saves():
    from self_instruct.generate import GenerateConfig, dry_run

    _, bound = dry_run(GenerateConfig(output_dir="unused", base_url="http://127.0.0.1:9/v1", model_name="gpt-4o",
                                      num_instructions_to_generate=100))
    full = float(re.search(r"^cost: at most \$([\d.]+)", bound, re.M).group(1))
    batched, saved = map(float, re.search(r"^through --batch: at most \$([\d.]+), \$([\d.]+) less", bound, re.M).groups())
    assert batched == pytest.approx(full / 2, abs=1e-4) and saved == pytest.approx(full / 2, abs=1e-4)
    own = dry_run(GenerateConfig(output_dir="unused", base_url="http://127.0.0.1:9/v1", model_name="mine",
                                 price_prompt=1.0, price_completion=2.0))[1]
    assert "--batch" not in own  # no discount is assumed for a price the table does not list


def test_a_kill_after_the_replies_were_settled_counts_nothing_twice(server, tmp_path):
    result = score(server, tmp_path)
    record = result.output_dir / "batches.jsonl"
    # what a kill after the replies reached the ledger, before the ended line, leaves on disk
    lines = [b for b in read_jsonl(record) if b["event"] != "ended"]
    record.write_text("".join(json.dumps(b) + "\n" for b in lines), encoding="utf-8")
    spent = read_spend(result.output_dir / "ledger.jsonl")[0]
    again = score(server, tmp_path)
    assert again.stopped_by == "done" and server.creations == 1 and server.requests == []
    assert [b["event"] for b in read_jsonl(record)] == ["intent", "created", "ended"]
    assert [line["event"] for line in ledger_of(again)].count("done") == 4
    assert read_spend(result.output_dir / "ledger.jsonl")[0] == spent


def test_the_key_reaches_no_file_of_a_batch_run(tmp_path):
    key = "sk-batch-secret-0123456789"
    server = FakeBatches(api_key=key).start()  # every call, the batch ones too, must carry it
    server.reply_fn = verdicts
    try:
        result = score_file(write_input(tmp_path), str(tmp_path / "scored.jsonl"), base_url=server.base_url,
                            api_key=key, **FAST)
    finally:
        server.stop()
    assert result.stopped_by == "done" and server.creations == 1
    for path in [tmp_path / "scored.jsonl", *result.output_dir.iterdir()]:
        assert key.encode() not in path.read_bytes(), path


def test_batch_with_the_embedded_teacher_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli([str(write_input(tmp_path)), "--output", str(tmp_path / "scored.jsonl"), "--teacher", "local", "--batch"])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--batch needs an OpenAI-compatible server" in line
    assert not (tmp_path / "scored.jsonl.run").exists()
