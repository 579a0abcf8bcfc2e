"""Shared fixtures. Tests need no network and no GPU: tiny random models and a locally trained tokenizer."""

from __future__ import annotations

import os

# Before anything imports torch or the hub client: offline, one thread (2 OpenMP threads on a busy
# 2-core machine make tiny models 10-100x slower), no tokenizer thread pools.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# The CPU suite runs on the CPU on every machine, so its results do not depend on having a GPU (its fp32
# tolerances, single-device and two-rank gloo tests are CPU tests). tests/test_gpu.py holds the CUDA tests:
# FT_TEST_GPU=1 python -m pytest tests/test_gpu.py (they skip without CUDA).
if os.environ.get("FT_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Every process the suite starts runs tests/inject/sitecustomize.py first: torchrun's ranks of `ft` hand
# themselves to the worker's fork server (tests/ftproc.py), and FT_TEST_INJECT's hooks install themselves.
_INJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inject")
if _INJECT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_INJECT, os.environ.get("PYTHONPATH")) if p)

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a git-ignored copy inside it where only the checkout travels (the GPU machine)
SHARED = ROOT / "shared" if (ROOT / "shared").is_dir() else ROOT.parent / "shared"
DATA = Path(__file__).resolve().parent / "data"


def run_ft(*args: str, cwd: Path | str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a process of its own, as a user would (tests/ftproc.py: forked from a server that
    has the libraries imported, or a fresh interpreter where that could make a difference)."""
    import ftproc

    return ftproc.run([str(a) for a in args], cwd=cwd or ROOT, env={**os.environ, **(env or {})}, timeout=600)


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tests first, longest first (`pytest.mark.slow(seconds=N)`, 10 s unless said), so that the
    workers (-n 3 --dist worksteal) share them out instead of one ending on a long one while the others idle.
    Every worker collects the same order (the sort is stable)."""

    def weight(item) -> float:
        slow = item.get_closest_marker("slow")
        return 0.0 if slow is None else float(slow.kwargs.get("seconds", 10))

    items.sort(key=lambda item: -weight(item))


def pytest_sessionstart(session) -> None:
    """Each worker's fork server for ft runs starts now and imports the libraries while the first tests run."""
    if hasattr(session.config, "workerinput"):  # an xdist worker (elsewhere the server starts on first use)
        import ftproc

        ftproc.start_server()


@pytest.fixture(autouse=True)
def _environment_as_the_suite_set_it():
    """What a test's in-process run leaves in os.environ (accelerate's and transformers' variables, ft's cache
    folders) is taken back after it: the next tests, and the runs they start, begin from the suite's environment,
    which is the fork server's (a variable a library reads at import that differs from the server's makes every
    later run of the worker a fresh interpreter: tests/ftproc.py). FT_TEST_FORK_SOCKET, the server's address,
    stays."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before) - {"FT_TEST_FORK_SOCKET"}:
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ft.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A factory: tiny_model_dir("llama") → folder with a saved tiny model and tokenizer (built once)."""
    from ft.tiny import make_tiny_model

    built: dict[str, Path] = {}

    def get(arch: str = "llama") -> Path:
        if arch not in built:
            built[arch] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def mid_of(tmp_path_factory):
    """A factory: mid_of(arch) → a model of hidden 512 and 4 layers of that architecture (built once): the plan's
    measurements (tests/test_plan.py, tests/test_selective_checkpointing.py)."""
    from ft.tiny import make_tiny_model

    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            extra = {"head_dim": 64, "query_pre_attn_scalar": 64} if arch == "gemma2" else {}
            built[arch] = make_tiny_model(tmp_path_factory.mktemp(f"mid-{arch}"), arch, hidden_size=512, intermediate_size=1376,
                                          num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, **extra)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def mid_model(mid_of) -> Path:
    return mid_of("llama")
