"""Corpus sources: where documents come from, and the fixed train/validation split.

Sources (``--corpus``):

* ``stdlib`` (the embedded default): the ``.py`` files of the running interpreter's standard
  library, ``site-packages`` excluded, in sorted relative-path order. Needs no network.
* ``files:GLOB``: local text files matched by a (recursive, ``**``) glob.
* ``hf:NAME[:CONFIG[:SPLIT]]``: a Hugging Face dataset through ``datasets.load_dataset`` (hub or
  local cache); its ``text`` column, one document per row. SPLIT is a datasets split expression
  (``train[:400000]`` takes the first 400k rows; default: every split).

Every document is assigned to validation iff a hash of its name falls in the first
``VALIDATION_PERMILLE`` of 1000 buckets (about 5 %), so the split is fixed by the names alone,
disjoint by document, and the same for every run. The fingerprint is a sha256 over the names and
contents of all documents; runs record it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

VALIDATION_PERMILLE = 50


class CorpusError(ValueError):
    """A corpus that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass
class Corpus:
    spec: str
    train: list[Document]
    validation: list[Document]
    fingerprint: str
    skipped: list[str] = field(default_factory=list)

    @property
    def num_documents(self) -> int:
        return len(self.train) + len(self.validation)


def is_validation(name: str) -> bool:
    bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 1000
    return bucket < VALIDATION_PERMILLE


def fingerprint(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.name):
        h.update(d.name.encode() + b"\0" + hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()


def _split(spec: str, docs: list[Document], skipped: list[str]) -> Corpus:
    docs = sorted(docs, key=lambda d: d.name)
    if not docs:
        raise CorpusError(f"corpus {spec!r} has no readable documents")
    train = [d for d in docs if not is_validation(d.name)]
    val = [d for d in docs if is_validation(d.name)]
    if not train or not val:
        raise CorpusError(
            f"corpus {spec!r} has {len(docs)} documents, too few for a train/validation split "
            f"({len(train)} train, {len(val)} validation); add documents"
        )
    return Corpus(spec, train, val, fingerprint(docs), skipped)


def _read_utf8(paths: list[Path], base: Path) -> tuple[list[Document], list[str]]:
    """UTF-8 text files as documents; files that are not UTF-8, or hold NUL bytes (binary files that
    happen to decode), are skipped by name."""
    docs, skipped = [], []
    for p in paths:
        name = p.relative_to(base).as_posix()
        data = p.read_bytes()
        try:
            if b"\x00" in data:
                raise UnicodeDecodeError("utf-8", data, data.index(b"\x00"), data.index(b"\x00") + 1, "NUL byte")
            docs.append(Document(name, data.decode("utf-8")))
        except UnicodeDecodeError:
            skipped.append(name)
    return docs, skipped


def _warn_skipped(spec: str, skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"warning: corpus {spec!r}: skipped {len(skipped)} file(s) that are not UTF-8 text: {shown}",
              file=sys.stderr)


def stdlib_corpus() -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py")
                   if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
    docs, skipped = _read_utf8(paths, root)
    _warn_skipped("stdlib", skipped)
    return _split("stdlib", docs, skipped)


def files_corpus(pattern: str) -> Corpus:
    spec = f"files:{pattern}"
    if not pattern:
        raise CorpusError("corpus 'files:' needs a glob, e.g. files:'docs/**/*.txt'")
    paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file())
    if not paths:
        raise CorpusError(f"corpus {spec!r}: no files match {pattern!r}")
    base = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    docs, skipped = _read_utf8([p.resolve() for p in paths], base)
    _warn_skipped(spec, skipped)
    return _split(spec, docs, skipped)


def hf_corpus(name: str, config: str | None, split: str | None = None) -> Corpus:
    spec = f"hf:{name}" + (f":{config}" if config else "") + (f":{split}" if split else "")
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
        if split:
            ds = {split: ds}
    except Exception as e:  # network, missing cache, unknown name: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(f"corpus {spec!r} could not be loaded (no hub or local cache?): {first}") from None
    docs = []
    for split in ds:
        if "text" not in ds[split].column_names:
            raise CorpusError(f"corpus {spec!r}: split {split!r} has no 'text' column")
        docs += [Document(f"{split}/{i:09d}", t) for i, t in enumerate(ds[split]["text"]) if t]
    return _split(spec, docs, [])


def load_corpus(spec: str) -> Corpus:
    """Resolve a ``--corpus`` value to documents; raises ``CorpusError`` with a one-line reason."""
    if spec == "stdlib":
        return stdlib_corpus()
    kind, _, rest = spec.partition(":")
    if kind == "files":
        return files_corpus(rest)
    if kind == "hf":
        name, _, rest = rest.partition(":")
        config, _, split = rest.partition(":")
        if not name:
            raise CorpusError("corpus 'hf:' needs a dataset name, e.g. hf:wikitext:wikitext-2-raw-v1")
        return hf_corpus(name, config or None, split or None)
    raise CorpusError(f"unknown corpus {spec!r}; use stdlib, files:GLOB or hf:NAME[:CONFIG[:SPLIT]]")
