"""The checks that hold a conversation's turns together, and how a reply becomes one turn
(self_instruct.pipelines.conversations); whole runs are in tests/commands/test_conversations.py."""
import pytest

from self_instruct.core.templates import fill
from self_instruct.pipelines.conversations import (
    TurnTemplates,
    content_words,
    read_turn,
    repeated,
    transcript,
    unrelated,
)


def exchange(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_content_words_drop_stopwords_and_make_plurals_singular():
    assert content_words("Why do tomatoes and berries need the sun?") == {"tomato", "berry", "sun"}
    assert content_words("Could you tell me more about that, please?") == set()


def test_a_follow_up_on_the_answer_passes():
    talk = exchange("Name a fruit.", "An apple is a crisp, sweet fruit that keeps for months.")
    assert unrelated("How long do apples keep in a cold cellar?", talk) is None


def test_a_follow_up_sharing_no_content_word_with_the_answer_is_unrelated():
    talk = exchange("Name a fruit.", "An apple is a crisp, sweet fruit.")
    assert unrelated("What is the capital of Peru?", talk) == \
        "no content word of the answer it follows (apple, crisp, fruit, sweet)"
    # a follow-up of stopwords alone names nothing it follows from
    assert unrelated("Can you tell me more about that?", talk) is not None


def test_after_a_short_answer_the_question_before_it_counts_too():
    """A one-word answer ("Positive.") leaves a follow-up nothing to pick up but the question."""
    talk = exchange("Classify the sentiment of this review: the battery died in a day.", "Negative.")
    assert unrelated("Would a longer battery life have changed the label?", talk) is None
    assert "the exchange it follows" in unrelated("What is the tallest mountain on Earth?", talk)


def test_a_user_turn_repeating_an_earlier_one_is_found_by_rouge_l():
    talk = exchange("Explain how tides work.", "The moon's gravity pulls the oceans.")
    assert repeated("Explain how the tides work.", talk, 0.7).startswith("0.8889 vs 'Explain how tides work.'")
    assert repeated("Why does the moon pull harder on the near side?", talk, 0.7) is None


def test_a_reply_becomes_one_turn():
    assert read_turn(" Why is that?\n") == "Why is that?"
    assert read_turn("User: Why is that?") == "Why is that?"
    assert read_turn("**Assistant:** Because the sun sets.") == "Because the sun sets."
    # a model that writes both sides: the other speaker's part is cut off
    assert read_turn("Why is that?\n\nAssistant: Because.\nUser: And then?") == "Why is that?"
    assert read_turn("Assistant:   ") == ""


def test_the_templates_show_the_transcript_and_leave_the_speaker_open():
    templates = TurnTemplates.load()
    talk = transcript(exchange("Name a fruit.", "An apple."))
    assert talk == "User: Name a fruit.\n\nAssistant: An apple."
    for template, label in ((templates.user, "User:"), (templates.assistant, "Assistant:")):
        prompt = fill(template, transcript=talk)
        assert prompt.endswith(f"{talk}\n\n{label}")


@pytest.mark.parametrize("text", ["", "   \n"])
def test_an_empty_reply_is_no_turn(text):
    assert read_turn(text) == ""
