"""Byte-level BPE trained on the training split, cached by corpus fingerprint and vocabulary size.

Special tokens have fixed ids: ``[PAD]`` 0, ``[MASK]`` 1, ``[EOD]`` 2 (the document separator,
also the AR model's start token). Byte-level BPE encodes any text losslessly: decoding the ids
of a file gives the file back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as bpe_models
from transformers import PreTrainedTokenizerFast

from data.corpus import Corpus

PAD, MASK, EOD = "[PAD]", "[MASK]", "[EOD]"
SPECIAL_TOKENS = [PAD, MASK, EOD]
#: bump when the training recipe changes, so cached tokenizers are rebuilt
TOKENIZER_VERSION = 1


def cache_root() -> Path:
    """``$CROSSOVER_CACHE``, else ``$XDG_CACHE_HOME/crossover``, else ``~/.cache/crossover``."""
    if os.environ.get("CROSSOVER_CACHE"):
        return Path(os.environ["CROSSOVER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crossover"


def tokenizer_hash(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the serialised tokenizer (vocabulary, merges, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def _train(corpus: Corpus, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(bpe_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in corpus.train), trainer=trainer, length=len(corpus.train))
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, mask_token=MASK, eos_token=EOD, sep_token=EOD,
        clean_up_tokenization_spaces=False,
    )


def from_json(text: str) -> PreTrainedTokenizerFast:
    """The tokenizer serialised by ``tokenizer.backend_tokenizer.to_str()`` (as checkpoints store it)."""
    return _wrap(Tokenizer.from_str(text))


def get_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """Load the tokenizer for (corpus fingerprint, vocab size) from the cache, training it if absent."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} for byte-level BPE, "
                         f"got {vocab_size}")
    key = f"{corpus.fingerprint[:16]}-v{vocab_size}-r{TOKENIZER_VERSION}"
    path = (cache_dir or cache_root()) / "tokenizers" / key
    if not path.exists():
        tokenizer = _train(corpus, vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{key}-"))
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, path)  # atomic: concurrent builders race harmlessly
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2], "special token ids moved"
    return tokenizer


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte.

    In byte-level BPE every character of a vocabulary string stands for exactly one byte.
    """
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for token, i in tokenizer.get_vocab().items():
        lengths[i] = 0 if i in special else len(token)
    return lengths
