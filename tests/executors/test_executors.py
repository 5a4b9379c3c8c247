"""Where work runs: the local executor, the checks on --executor, and the one line without Ray."""
import subprocess
import sys
from pathlib import Path

import pytest

from self_instruct.errors import ConfigError
from self_instruct.executors import INSTALL_RAY, LocalExecutor, open_executor

REPO = Path(__file__).resolve().parents[2]


class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, n):
        self.value += n
        return self.value


def square(n):
    return n * n


def test_local_actors_keep_state_and_map_keeps_order():
    executor = LocalExecutor()
    first, second = executor.actors(Counter, 2, 10)
    assert executor.get([executor.call(first, "add", 1), executor.call(first, "add", 2),
                         executor.call(second, "add", 5)]) == [11, 13, 15]
    assert list(executor.map(square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("name, address, message", [
    ("spark", None, "--executor must be one of local, ray (got 'spark')"),
    ("local", "ray://head:10001", "--ray_address goes with --executor ray"),
])
def test_bad_executor_choices_are_one_line(name, address, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with open_executor(name, address):
            pass


def test_documents_with_executor_ray_but_no_ray_says_how_to_install_it(tmp_path):
    pytest.importorskip("pysbd", reason="needs the [docs] extra")
    (tmp_path / "notes.txt").write_text("Tomatoes need sun. Water them twice a week.\n")
    code = ("import sys; sys.modules['ray'] = None\n"  # what an install without the [ray] extra sees
            "from self_instruct.documents import cli; cli(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "notes.txt"), "--mode", "windows",
                             "--executor", "ray", "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"self_instruct: error: {INSTALL_RAY}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_map_gives_results_in_order_and_actors_keep_state(ray_cluster):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers do not have the tests on their path
    with open_executor("ray") as executor:
        assert list(executor.map(square, range(20), window=3)) == [n * n for n in range(20)]
        [actor] = executor.actors(Counter, 1, 1)
        assert executor.get([executor.call(actor, "add", 2)]) == [3]
        assert executor.get([executor.call(actor, "add", 2)]) == [5]


@pytest.mark.parametrize("flags, message", [
    (["--executor", "spark"], "--executor must be one of local, ray (got 'spark')"),
    (["--ray_address", "HEAD:6379"], "--ray_address goes with --executor ray"),
])
def test_documents_executor_flags_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    pytest.importorskip("pysbd", reason="needs the [docs] extra")
    from self_instruct.documents import cli

    (tmp_path / "notes.txt").write_text("Tomatoes need sun. Water them twice a week.\n")
    with pytest.raises(SystemExit) as exit:
        cli([str(tmp_path / "notes.txt"), "--mode", "windows", "--output_dir", str(tmp_path / "out"), *flags])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"self_instruct: error: {message}"]
    assert not (tmp_path / "out").exists()
