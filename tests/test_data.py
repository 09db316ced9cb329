"""Corpus split, tokenizer round trip, exact and nested budgets."""

from __future__ import annotations

import numpy as np
import pytest

from data import (
    BudgetError,
    CorpusError,
    get_tokenizer,
    load_corpus,
    take_budget,
    token_byte_lengths,
    token_streams,
    validation_set,
)
from data.corpus import is_validation

VOCAB = 320


@pytest.fixture(scope="module")
def corpus(corpus_spec):
    return load_corpus(corpus_spec)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return get_tokenizer(corpus, VOCAB)


@pytest.fixture(scope="module")
def streams(corpus, tokenizer):
    return token_streams(corpus, tokenizer)


def test_split_is_disjoint_fixed_and_by_name(corpus, corpus_spec):
    train, val = {d.name for d in corpus.train}, {d.name for d in corpus.validation}
    assert train and val and not train & val
    assert all(is_validation(n) for n in val) and not any(is_validation(n) for n in train)
    again = load_corpus(corpus_spec)
    assert [d.name for d in again.validation] == [d.name for d in corpus.validation]
    assert again.fingerprint == corpus.fingerprint
    assert 0.01 < len(val) / corpus.num_documents < 0.15


def test_fingerprint_changes_with_content(tmp_path, corpus_dir):
    from tests.conftest import write_corpus

    other = write_corpus(tmp_path / "c")
    fp = load_corpus(f"files:{other}/*.py").fingerprint
    (other / "doc_005.py").write_text("changed\n")
    assert load_corpus(f"files:{other}/*.py").fingerprint != fp


def test_special_tokens_and_round_trip(corpus, tokenizer):
    assert [tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert len(tokenizer) == VOCAB
    for doc in corpus.validation[:3] + corpus.train[:3]:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == doc.text
        assert not {0, 1, 2} & set(ids)
        assert token_byte_lengths(tokenizer)[ids].sum() == len(doc.text.encode())


def test_tokenizer_is_cached(corpus, tokenizer, _isolated_cache):
    assert list((_isolated_cache / "tokenizers").iterdir())
    again = get_tokenizer(corpus, VOCAB)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_budget_is_exact_padded_and_nested(streams):
    L = 16
    small, large = take_budget(streams, 1000, L, 0), take_budget(streams, 2503, L, 0)
    assert small.num_tokens == 1000 and large.num_tokens == 2503
    assert len(large) == -(-2503 // L) and not large.valid[-1, 2503 % L:].any() and large.valid[-1, : 2503 % L].all()
    assert (large.tokens[-1, 2503 % L:] == 0).all()  # padding is [PAD]
    flat_small, flat_large = small.tokens[small.valid], large.tokens[large.valid]
    assert (flat_large[:1000] == flat_small).all()  # a smaller budget is a prefix of a larger one
    assert (flat_large.numpy() == streams.train[:2503]).all()


def test_training_order_is_seeded_and_holds_every_document_once(corpus, tokenizer, streams):
    again = token_streams(corpus, tokenizer, order_seed=0)
    other = token_streams(corpus, tokenizer, order_seed=1)
    assert (again.train == streams.train).all() and not np.array_equal(other.train, streams.train)
    assert len(other.train) == len(streams.train)
    assert (streams.train == tokenizer.eos_token_id).sum() == len(corpus.train)


def test_validation_documents_never_in_training(corpus, tokenizer, streams):
    val = validation_set(streams, 10**9, 32, 0)
    expected = np.concatenate([tokenizer(d.text, add_special_tokens=False)["input_ids"] + [2]
                               for d in corpus.validation])
    assert (val.tokens[val.valid].numpy() == expected).all()
    # each training document appears in the training stream; no validation document does
    train_text = tokenizer.decode(streams.train.tolist())
    assert all(d.text in train_text for d in corpus.train[:10])
    assert not any(d.text in train_text for d in corpus.validation)


def test_budget_errors(streams):
    with pytest.raises(BudgetError, match="exceeds the training split"):
        take_budget(streams, len(streams.train) + 1, 16, 0)
    with pytest.raises(BudgetError, match="positive"):
        take_budget(streams, 0, 16, 0)
    assert take_budget(streams, len(streams.train), 16, 0).num_tokens == len(streams.train)


def test_non_utf8_file_is_skipped_with_its_name(tmp_path, capsys):
    from tests.conftest import write_corpus

    folder = write_corpus(tmp_path / "c")
    (folder / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (folder / "zeros.py").write_bytes(b"\x00" * 4096)  # decodes as UTF-8, but is no text
    corpus = load_corpus(f"files:{folder}/*.py")
    assert corpus.skipped == ["latin1.py", "zeros.py"]
    err = capsys.readouterr().err
    assert "latin1.py" in err and "zeros.py" in err and len(err.strip().splitlines()) == 1
    assert not {"latin1.py", "zeros.py"} & {d.name for d in corpus.train + corpus.validation}


@pytest.mark.parametrize("spec, message", [
    ("files:/nonexistent/*.txt", "no files match"),
    ("nope", "unknown corpus"),
    ("hf:", "needs a dataset name"),
])
def test_corpus_errors(spec, message):
    with pytest.raises(CorpusError, match=message):
        load_corpus(spec)


def test_stdlib_corpus_round_trip():
    """The embedded default: the interpreter's standard library, split and fingerprinted."""
    corpus = load_corpus("stdlib")
    names = [d.name for d in corpus.train]
    assert names == sorted(names) and "os.py" in names + [d.name for d in corpus.validation]
    assert not any("site-packages" in n for n in names)
    assert 0.03 < len(corpus.validation) / corpus.num_documents < 0.08
