import pytest

from self_instruct.parse import is_noinput, parse_completion


def block(i, instruction, inp, out, open_=False):
    head = f" {instruction}" if open_ else f"{i}. Instruction: {instruction}"
    return f"{head}\n{i}. Input:\n{inp}\n{i}. Output:\n{out}\n"


def test_completion_continues_open_number():
    text = block(4, "Add two and three together.", "<noinput>", "5", open_=True) + "###\n" + block(5, "Reverse the given word please.", "stressed", "desserts")
    examples, rejections = parse_completion(text, "stop", 3)
    assert [(e.instruction, e.input, e.output) for e in examples] == [
        ("Add two and three together.", "", "5"), ("Reverse the given word please.", "stressed", "desserts")]
    assert rejections == []


def test_chat_reply_that_restates_the_number_or_starts_with_hashes():
    text = "4. Instruction: Add two and three together.\n4. Input:\n<noinput>\n4. Output:\n5\n"
    for reply in (text, "###\n" + text):
        examples, rejections = parse_completion(reply, "stop", 3)
        assert [e.instruction for e in examples] == ["Add two and three together."] and not rejections


def test_truncated_last_block_dropped_only_when_length():
    text = block(4, "First full task here.", "<noinput>", "ok", open_=True) + "###\n5. Instruction: Cut off in the mid"
    examples, rejections = parse_completion(text, "length", 3)
    assert [e.instruction for e in examples] == ["First full task here."]
    assert [r.reason for r in rejections] == ["truncated"]
    _, rejections = parse_completion(text, "stop", 3)
    assert [r.reason for r in rejections] == ["missing_field"]


def test_wrong_numbering_is_rejected_with_reason():
    text = block(4, "First task of the list.", "", "a", open_=True) + "###\n" + block(7, "Skipped ahead in numbering.", "", "b")
    examples, rejections = parse_completion(text, "stop", 3)
    assert len(examples) == 1
    assert rejections[0].reason == "wrong_number" and "expected 5, found 7" in rejections[0].detail


@pytest.mark.parametrize("missing", ["Input", "Output"])
def test_missing_field(missing):
    text = block(4, "Task with a field gone.", "x", "y", open_=True).replace(f"4. {missing}:", "")
    examples, rejections = parse_completion(text, "stop", 3)
    assert examples == [] and rejections[0].reason == "missing_field"


def test_duplicate_field_is_rejected():
    text = block(4, "Task with two outputs.", "x", "y", open_=True) + "4. Output:\nz\n"
    examples, rejections = parse_completion(text, "stop", 3)
    assert examples == [] and rejections[0].reason == "missing_field"


@pytest.mark.parametrize("variant", ["<noinput>", "<Noinput>.", '"<noinput>"', "<no input>", "<No-Input>", " <NOINPUT> "])
def test_noinput_variants_become_empty(variant):
    assert is_noinput(variant)
    examples, _ = parse_completion(block(4, "Name a kind of tree.", variant, "Oak.", open_=True), "stop", 3)
    assert examples[0].input == ""


def test_real_input_mentioning_noinput_is_kept():
    assert not is_noinput("The tag <noinput> marks an empty field.")


def test_empty_and_garbage_replies():
    assert parse_completion("", "stop", 3) == ([], [])
    examples, rejections = parse_completion(" Sorry, I can't help.", "stop", 3)
    assert examples == [] and rejections[0].reason == "missing_field"


def test_output_keeps_inner_newlines_and_strips_edges():
    text = block(4, "List two fruits on lines.", "<noinput>", "apple\nbanana\n\n", open_=True)
    examples, _ = parse_completion(text, "stop", 3)
    assert examples[0].output == "apple\nbanana"
