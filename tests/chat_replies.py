"""Replies in the styles today's chat teachers answer our prompt with (written for these tests).

Each prompt ended with `###\\n4. Instruction:` (three seed tasks shown). A chat model restates the
open number, often after a preamble, in markdown, and closes with a remark.
"""

# gpt-4o-mini style: a sentence, the list with `###` separators, a closing line.
PREAMBLE_AND_REMARK = """Sure! Here are more tasks for the list:

###
4. Instruction: Name the largest planet in the solar system.
4. Input:
<noinput>
4. Output:
Jupiter is the largest planet in the solar system.

###
5. Instruction: Rewrite the sentence in the passive voice.
5. Input:
The committee approved the new budget.
5. Output:
The new budget was approved by the committee.

Let me know if you'd like more tasks!"""

# Llama-3-Instruct style: bold labels, values on the label's line, a two-paragraph output last.
BOLD_LABELS = """Here are the next tasks in the list:

**4. Instruction:** Classify the sentiment of the review as positive or negative.
**4. Input:** The battery died after two days and support never answered.
**4. Output:** Negative

###

**5. Instruction:** Explain why leaves change color in autumn.
**5. Input:** <noinput>
**5. Output:** As days shorten, trees stop making chlorophyll, the green pigment.

The yellow and orange pigments that were there all along then show through.

I hope these tasks are helpful for your training set!"""

# Qwen-Instruct style: markdown outputs with headings and a code fence holding `###` lines.
MARKDOWN_OUTPUTS = """###
4. Instruction: Give a short plan for repotting a houseplant.
4. Input:
<noinput>
4. Output:
Plan:
### Steps
1. Water the plant a day before.
2. Ease it out of the old pot.
3. Set it in fresh soil one size up.
### Aftercare
Keep it out of direct sun for a week.
###
5. Instruction: Add section comments to this Python function.
5. Input:
def area(w, h):
    return w * h
5. Output:
```python
###
# geometry helpers
###
def area(w, h):
    return w * h
```
###
6. Instruction: Write a haiku about the sea at night.
6. Input:
<noinput>
6. Output:
Black water breathing
a lighthouse counts the long waves
salt on the cold wind"""

MARKDOWN_OUTPUTS_EXPECTED = [
    ("Give a short plan for repotting a houseplant.", "",
     "Plan:\n### Steps\n1. Water the plant a day before.\n2. Ease it out of the old pot.\n"
     "3. Set it in fresh soil one size up.\n### Aftercare\nKeep it out of direct sun for a week."),
    ("Add section comments to this Python function.", "def area(w, h):\n    return w * h",
     "```python\n###\n# geometry helpers\n###\ndef area(w, h):\n    return w * h\n```"),
    ("Write a haiku about the sea at night.", "",
     "Black water breathing\na lighthouse counts the long waves\nsalt on the cold wind"),
]


def numbered(numbers, preamble="Of course, here you go:\n\n"):
    """A chat reply whose blocks carry the given numbers, e.g. (4, 5, 7) skipping 6."""
    blocks = [
        f"{k}. Instruction: Give one synonym for the word number {k}.\n{k}. Input:\nquick\n{k}. Output:\nfast\n"
        for k in numbers
    ]
    return preamble + "###\n".join(blocks)
