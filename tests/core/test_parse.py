import pytest

from self_instruct.core.parse import is_noinput, parse_completion

import chat_replies


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


# Chat teachers: replies written in the styles of today's chat models (tests/chat_replies.py).

def triples(examples):
    return [(e.instruction, e.input, e.output) for e in examples]


def test_chat_preamble_and_closing_remark_are_ignored():
    examples, rejections = parse_completion(chat_replies.PREAMBLE_AND_REMARK, "stop", 3)
    assert triples(examples) == [
        ("Name the largest planet in the solar system.", "", "Jupiter is the largest planet in the solar system."),
        ("Rewrite the sentence in the passive voice.", "The committee approved the new budget.",
         "The new budget was approved by the committee."),
    ]
    assert rejections == []


def test_bold_labels_and_a_multi_paragraph_last_output():
    examples, rejections = parse_completion(chat_replies.BOLD_LABELS, "stop", 3)
    assert triples(examples) == [
        ("Classify the sentiment of the review as positive or negative.",
         "The battery died after two days and support never answered.", "Negative"),
        ("Explain why leaves change color in autumn.", "",
         "As days shorten, trees stop making chlorophyll, the green pigment.\n\n"
         "The yellow and orange pigments that were there all along then show through."),
    ]
    assert rejections == []


def test_headings_and_code_fences_inside_outputs_stay_whole():
    examples, rejections = parse_completion(chat_replies.MARKDOWN_OUTPUTS, "stop", 3)
    assert triples(examples) == chat_replies.MARKDOWN_OUTPUTS_EXPECTED and rejections == []


def test_completion_output_with_a_heading_keeps_the_tasks_after_it():
    text = block(4, "Outline a weekly study plan.", "<noinput>", "### Monday\nRead.\n### Tuesday\nPractise.", open_=True)
    text += "###\n" + block(5, "Name three prime numbers below ten.", "<noinput>", "2, 3 and 5")
    examples, rejections = parse_completion(text, "stop", 3)
    assert triples(examples) == [
        ("Outline a weekly study plan.", "", "### Monday\nRead.\n### Tuesday\nPractise."),
        ("Name three prime numbers below ten.", "", "2, 3 and 5"),
    ]
    assert rejections == []


@pytest.mark.parametrize("remark", [
    "\n###\nThese tasks cover several kinds of work.",
    "\n\n---\n\nFeel free to ask for more examples.",
    "\n\nI hope this helps! Let me know if you need anything else.\n\nHappy training!",
    "\n\n**Would you like me to continue the list?**",
    "\n\nThese 2 new tasks cover vocabulary.\n\nHappy training!",
])
def test_closing_remarks_are_cut_from_the_last_output(remark):
    text = chat_replies.numbered((4, 5)) + remark
    examples, rejections = parse_completion(text, "stop", 3)
    assert [e.output for e in examples] == ["fast", "fast"] and rejections == []


@pytest.mark.parametrize("output", [
    "Hi team,\n\nThe picnic moves to Saturday.\n\nI hope to see you all there.\n\nBest,\nDana",
    "Step one.\n\nStep two.\n\nLet the dough rest for an hour.",
    '```python\ndef hello():\n    """Say hello."""\n\n    Let me know if you need more\n```',
    "These tasks cover a lot.",  # a remark's words as the whole output: never cut to nothing
    "Plan:\n### Steps\n1. Pack.\n\n### Then\n2. Go.",
    "```python\n###\n# helpers\n###\n\nThese tasks cover the helpers.\n```",
    "Chores for the week.\n\nThese tasks should be done in order.",
])
def test_multi_paragraph_outputs_are_not_taken_for_remarks(output):
    text = chat_replies.numbered((4,)) + "###\n" + block(5, "Write a short note to the team.", "<noinput>", output)
    examples, _ = parse_completion(text, "stop", 3)
    assert examples[-1].output == output


def test_truncated_chat_reply_drops_only_the_cut_task():
    text = chat_replies.numbered((4, 5)) + "###\n6. Instruction: Give one synonym for the word"
    examples, rejections = parse_completion(text, "length", 3)
    assert len(examples) == 2 and [r.reason for r in rejections] == ["truncated"]


def test_drifting_numbers_are_rejected_by_default():
    examples, rejections = parse_completion(chat_replies.numbered((4, 5, 7, 8)), "stop", 3)
    assert len(examples) == 2
    assert [(r.reason, r.detail) for r in rejections] == [
        ("wrong_number", "expected 6, found 7"), ("wrong_number", "expected 7, found 8")]


@pytest.mark.parametrize("numbers", [(4, 5, 7, 8), (1, 2, 3, 4), (4, 4, 5, 6)])
def test_renumber_keeps_blocks_whose_own_labels_agree(numbers):
    examples, rejections = parse_completion(chat_replies.numbered(numbers), "stop", 3, renumber=True)
    assert [e.instruction for e in examples] == [f"Give one synonym for the word number {k}." for k in numbers]
    assert rejections == []


def test_renumber_still_rejects_a_block_whose_labels_disagree():
    text = chat_replies.numbered((4,)) + "###\n7. Instruction: Give an antonym of cold.\n8. Input:\n<noinput>\n8. Output:\nhot\n"
    text += "###\n" + block(9, "Give an antonym of light.", "<noinput>", "dark")
    examples, rejections = parse_completion(text, "stop", 3, renumber=True)
    assert [e.output for e in examples] == ["fast", "dark"]
    assert [r.reason for r in rejections] == ["wrong_number"]


def test_preamble_before_a_restated_open_number_with_hashes():
    text = "Certainly! Continuing the list.\n\n###\n" + block(4, "Convert 3 kilometres to metres.", "<noinput>", "3000 metres")
    examples, rejections = parse_completion(text, "stop", 3)
    assert triples(examples) == [("Convert 3 kilometres to metres.", "", "3000 metres")] and rejections == []


def test_completion_whose_open_task_lost_its_fields_keeps_the_rest():
    # The text before the first restated label holds a `###`: it is the open task, not a preamble.
    text = " Say something nice.\n###\n" + block(5, "Name a colour of the rainbow.", "<noinput>", "Red")
    examples, rejections = parse_completion(text, "stop", 3)
    assert [e.instruction for e in examples] == ["Name a colour of the rainbow."]
    assert [r.reason for r in rejections] == ["missing_field"]


def test_labels_of_other_numbers_inside_an_output_are_text():
    output = "1. Input: read the numbers.\n2. Output: print their sum."
    text = block(4, "Describe the steps of a tiny adder program.", "<noinput>", output, open_=True)
    text += "###\n" + block(5, "Name a colour of the rainbow.", "<noinput>", "Red")
    for renumber in (False, True):
        examples, rejections = parse_completion(text, "stop", 3, renumber=renumber)
        assert [e.output for e in examples] == [output, "Red"] and rejections == []


def test_a_doubled_separator_leaves_no_hashes_in_the_output():
    text = block(4, "Name a large ocean of the world.", "<noinput>", "The Pacific", open_=True) + "###\n\n###\n"
    text += block(5, "Name a colour of the rainbow.", "<noinput>", "Red") + "###\n"
    examples, rejections = parse_completion(text, "stop", 3)
    assert [e.output for e in examples] == ["The Pacific", "Red"] and rejections == []
