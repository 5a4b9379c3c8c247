import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# ../shared beside the checkout (CI), or two levels up from a worktree of it
SHARED = next((p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()), REPO.parent / "shared")
ANCHORS = SHARED / "anchors"


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path):
    """No test sees a real key or endpoint, or writes to the user's caches, or reaches a hub; and
    no test starts with keys an earlier one registered for masking (they would hide a leak)."""
    from self_instruct.io import secrets

    monkeypatch.setattr(secrets, "_secrets", set())
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture
def fake_server():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def anchors():
    if not ANCHORS.is_dir():
        pytest.skip("../shared/anchors is not present")
    return ANCHORS


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance for the session (2 CPUs, no dashboard); the executor reuses it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'self_instruct[ray]')")
    from self_instruct.executors.ray_executor import start_local

    if not ray.is_initialized():
        start_local(num_cpus=2)
    yield ray
    ray.shutdown()
