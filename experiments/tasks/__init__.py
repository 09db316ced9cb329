"""Local lm-evaluation-harness tasks, shipped with the package (the hub cannot be reached everywhere).

``crossover_code_mc``: pick the true continuation of a line of Python among four. Each item is a
line from a document of the *validation* split of the default ``stdlib`` corpus (disjoint by
document from every run's training tokens), cut at the first space after a third of its length:
the context is the three lines before it plus the line's beginning, the choices are the line's
true rest and the rests of three lines from other validation documents, the closest in length
among twenty random candidates (so length alone does not give the answer). Metrics: ``acc`` and
``acc_norm`` (log-likelihood per byte), with lm-eval's standard errors.

The JSONL beside this file was made by ``experiments.tasks.write_code_mc()`` (seed 0) from the
validation split of CPython 3.11's standard library; the YAML registers it with lm-eval, which
reads it through ``load_code_mc`` (no download, no ``datasets`` cache).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

#: the folder of the task YAMLs (``TaskManager(include_path=...)``)
TASKS_DIR = Path(str(resources.files("experiments") / "tasks"))
CODE_MC = "crossover_code_mc"
LOCAL_TASKS = (CODE_MC,)


@dataclass(frozen=True)
class LineCut:
    """One candidate line: where it comes from, what precedes the cut, and the true rest."""

    source: str
    context: str
    rest: str


def cut_lines(name: str, text: str, context_lines: int = 3, min_chars: int = 24, min_rest: int = 8) -> list[LineCut]:
    """Lines of a document long enough to cut, each cut at the first single space after a third of the
    line (comment and string-only lines are skipped); the rest keeps its leading space."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        body = line.strip()
        if len(body) < min_chars or body.startswith(("#", '"', "'")):
            continue
        cut = next((j for j in range(len(body) // 3, len(body) - 1) if body[j] == " " != body[j + 1]), -1)
        if cut < 0 or len(body) - cut < min_rest:
            continue
        indent = line[: len(line) - len(line.lstrip())]
        context = "\n".join(lines[max(0, i - context_lines) : i] + [indent + body[:cut]])
        out.append(LineCut(f"{name}:{i + 1}", context, body[cut:]))
    return out


def _distractors(rng: random.Random, item: LineCut, pool: list[LineCut], k: int, candidates: int = 20) -> list[str]:
    """``k`` rests of lines from other documents, the closest in length to the true rest among random
    picks; none contains the true rest or is contained in it (no near-duplicate answers)."""
    doc, true = item.source.rsplit(":", 1)[0], item.rest.strip()
    seen, picks = {true}, []
    for other in rng.sample(pool, min(len(pool), candidates * 4)):
        rest = other.rest.strip()
        if other.source.rsplit(":", 1)[0] != doc and rest not in seen and not (rest in true or true in rest):
            seen.add(rest)
            picks.append(other.rest)
        if len(picks) == candidates:
            break
    return sorted(picks, key=lambda r: (abs(len(r) - len(item.rest)), r))[:k]


def code_mc_items(documents: list[tuple[str, str]], n_items: int = 200, n_choices: int = 4,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Multiple-choice items from ``(name, text)`` documents: context, choices, label, source."""
    pool = [c for name, text in documents for c in cut_lines(name, text)]
    if len(pool) < n_items + n_choices:
        raise ValueError(f"only {len(pool)} usable lines for {n_items} items")
    rng = random.Random(seed)
    items = []
    for n, item in enumerate(rng.sample(pool, n_items)):
        choices = _distractors(rng, item, pool, n_choices - 1)
        label = rng.randrange(n_choices)
        choices.insert(label, item.rest)
        items.append({"id": n, "source": item.source, "context": item.context, "choices": choices, "label": label})
    return items


def write_code_mc(path: Path | None = None, corpus: str = "stdlib", **kwargs: Any) -> Path:
    """Write the task's JSONL from the validation split of ``corpus``; returns its path."""
    from data import load_corpus

    docs = [(d.name, d.text) for d in load_corpus(corpus).validation]
    path = path or TASKS_DIR / f"{CODE_MC}.jsonl"
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in code_mc_items(docs, **kwargs)))
    return path


def load_code_mc(**_: Any) -> Any:
    """lm-eval ``custom_dataset``: the shipped JSONL as a ``datasets.DatasetDict`` with a ``test`` split."""
    import datasets

    text = (TASKS_DIR / f"{CODE_MC}.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
