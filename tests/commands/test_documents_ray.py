"""documents with --executor ray on a real local Ray instance: the files are read and chunked by
Ray tasks, the teacher and the pool stay on the driver, and the run writes what a local run writes."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pysbd", reason="needs the [docs] extra")

from test_documents import book, qa_teacher  # noqa: E402

from self_instruct import documents as documents_module  # noqa: E402
from self_instruct.documents import DocumentsConfig, documents, read_chunks  # noqa: E402
from self_instruct.executors import open_executor  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]
FILES = ("generated.jsonl", "rejected.jsonl", "commits.jsonl", "run.json")


def library(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for k in range(4):
        book(folder / f"guide{k}.md", sections=3 + k)
    (folder / "notes.txt").write_text("Short notes. " * 5 + "\n\n" + "Tomatoes like sun and water every week. " * 30)
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage\n%%EOF")  # skipped alike, with its reason
    return folder


def test_a_ray_run_writes_the_files_a_local_run_writes(ray_cluster, fake_server, tmp_path):
    fake_server.reply_fn = qa_teacher
    folder = library(tmp_path)
    for executor in ("local", "ray"):
        result = documents([str(folder)], str(tmp_path / executor), mode="qa", chunk_size=30, chunk_overlap=5,
                           base_url=fake_server.base_url, model_name="fake-model", quiet=True, no_report=True,
                           executor=executor)
        assert result.chunks >= 8 and result.kept > 0
    for name in FILES:
        local, ray = (tmp_path / "local" / name).read_text(), (tmp_path / "ray" / name).read_text()
        if name == "run.json":  # its clock and paths differ by nature; the settings and the run id do not
            local, ray = (local.replace(str(tmp_path / "local"), "OUT"), ray.replace(str(tmp_path / "ray"), "OUT"))
            local, ray = ([line for line in text.splitlines() if "_at" not in line and "time" not in line]
                          for text in (local, ray))
        assert ray == local, name


def killed_once(marker: str):
    """read_and_chunk, but the first attempt of the first file writes its pid to ``marker`` and
    waits to be killed."""
    def read(job):
        from self_instruct.documents import read_and_chunk
        if job[0].endswith("guide0.md"):
            try:
                open(marker + ".claimed", "x").close()  # the first attempt only
            except FileExistsError:
                return read_and_chunk(job)
            Path(marker + ".tmp").write_text(str(os.getpid()))
            os.rename(marker + ".tmp", marker)
            time.sleep(120)  # the test kills this process long before
        return read_and_chunk(job)
    return read


def test_a_killed_reading_task_is_run_again_and_nothing_is_lost_or_doubled(ray_cluster, tmp_path, monkeypatch):
    import ray.cloudpickle
    import test_documents_ray
    ray.cloudpickle.register_pickle_by_value(test_documents_ray)  # the workers do not have the tests on their path
    folder = library(tmp_path)
    cfg = DocumentsConfig(paths=(str(folder),), chunk_size=30, chunk_overlap=5)
    expected = read_chunks(cfg)
    marker = tmp_path / "pid"
    killed = []

    def kill_when_started():
        for _ in range(1200):
            if marker.exists():
                killed.append(int(marker.read_text()))
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    monkeypatch.setattr(documents_module, "read_and_chunk", killed_once(str(marker)))
    killer = threading.Thread(target=kill_when_started)
    killer.start()
    with open_executor("ray") as executor:
        got = read_chunks(DocumentsConfig(paths=(str(folder),), chunk_size=30, chunk_overlap=5, executor="ray"),
                          executor=executor)
    killer.join()
    assert killed  # the task's worker was killed mid-task, and Ray ran the task again
    assert got == expected
    assert [chunk.index for chunk in got[0]] == list(range(len(got[0])))


def test_a_ray_run_stopped_by_its_budget_holds_it_and_resumes_to_the_local_files(ray_cluster, fake_server, tmp_path):
    fake_server.reply_fn = qa_teacher
    folder = library(tmp_path)
    options = dict(mode="qa", chunk_size=30, chunk_overlap=5, base_url=fake_server.base_url, model_name="fake-model",
                   quiet=True, no_report=True)
    documents([str(folder)], str(tmp_path / "local"), **options)
    asked = len(fake_server.requests)
    stopped = documents([str(folder)], str(tmp_path / "ray"), executor="ray", max_requests=5, **options)
    assert stopped.stopped_by == "max_requests"
    assert len(fake_server.requests) - asked <= 5  # --max_requests holds with the reading on Ray
    resumed = documents([str(folder)], str(tmp_path / "ray"), executor="ray", **options)
    assert resumed.stopped_by == "done"
    for name in ("generated.jsonl", "rejected.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_a_servers_requests_go_from_the_ray_workers(ray_cluster, tmp_path, monkeypatch):
    """This session's Ray workers were started without the key: a server that wants it refuses
    every request they send, though the check from this process (with --api_key) passes."""
    from fake_openai import FakeOpenAI

    from self_instruct.errors import TeacherError
    key = "sk-test-documents-on-ray-0123456789"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # restored after, whatever the run sets
    server = FakeOpenAI(api_key=key).start()
    server.reply_fn = qa_teacher
    try:
        with pytest.raises(TeacherError, match="refused the request \\(401"):
            documents([str(library(tmp_path))], str(tmp_path / "out"), mode="qa", chunk_size=30, chunk_overlap=5,
                      base_url=server.base_url, model_name="fake-model", api_key=key, quiet=True, no_report=True,
                      executor="ray")
    finally:
        server.stop()
