import json
import random

import pytest

from self_instruct import SeedFormatError
from self_instruct.io.resources import default_seed_tasks_path
from self_instruct.core.seeds import load_seed_tasks, seed_examples
from self_instruct.core.filters import first_rejection


def test_bundled_seed_tasks_meet_the_product_card():
    tasks = load_seed_tasks()
    assert len(tasks) >= 175
    assert sum(t.is_classification for t in tasks) >= 25
    assert all(1 <= len(t.instances) <= 3 for t in tasks)
    assert len({t.name for t in tasks}) == len(tasks)
    # Our own filters would keep every seed instruction.
    for example in seed_examples(tasks):
        assert first_rejection(example) is None, example.instruction


def test_alpaca_seed_tasks_load_unchanged(anchors):
    tasks = load_seed_tasks(anchors / "alpaca_seed_tasks.jsonl")
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26
    assert tasks[1].instruction == "What is the relation between the given pairs?"
    assert tasks[1].instances[0].input == "Night : Day :: Right : Left"


def test_seed_examples_first_instance_or_drawn(tmp_path):
    line = {"id": "a", "name": "a", "instruction": "Say hi to them", "is_classification": False,
            "instances": [{"input": "", "output": "one"}, {"input": "", "output": "two"}]}
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(line) + "\n")
    tasks = load_seed_tasks(path)
    assert seed_examples(tasks)[0].output == "one"
    drawn = {seed_examples(tasks, random.Random(i))[0].output for i in range(20)}
    assert drawn == {"one", "two"}


def test_error_names_file_line_and_field(tmp_path):
    good = json.loads(default_seed_tasks_path().read_text().splitlines()[0])
    bad = dict(good, instances="oops")
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(bad, id="x2")) + "\n")
    with pytest.raises(SeedFormatError) as err:
        load_seed_tasks(path)
    assert str(err.value) == f'{path}:2: field "instances" must be a list (got string)'
