"""Shared fixtures: an isolated cache and a small synthetic ``files:`` corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tokenizer and token caches go to a per-session folder, unless CROSSOVER_TEST_CACHE names one."""
    path = os.environ.get("CROSSOVER_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    old = os.environ.get("CROSSOVER_CACHE")
    os.environ["CROSSOVER_CACHE"] = path
    yield Path(path)
    if old is None:
        os.environ.pop("CROSSOVER_CACHE", None)
    else:
        os.environ["CROSSOVER_CACHE"] = old


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine's thread contention
    (use with ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_corpus(folder: Path, n_docs: int = 120) -> Path:
    """Small Python-like documents with varied content (enough for a train/validation split)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "value", "index", "result", "total", "item", "count"]
    for i in range(n_docs):
        lines = [f"# module {i}", f"def func_{i}(x, y={i % 7}):"]
        for j in range(3 + i % 5):
            a, b = words[(i + j) % len(words)], words[(i * 3 + j) % len(words)]
            lines.append(f"    {a}_{j} = x * {j + i % 3} + y - {b!r}.count('{a[0]}')")
        lines.append(f"    return {words[i % len(words)]}_0  # ünïcode ✓ {i}")
        (folder / f"doc_{i:03d}.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def corpus_spec(corpus_dir) -> str:
    return f"files:{corpus_dir}/*.py"
