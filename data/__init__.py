"""Corpus sources, tokenizer and exact unique-token budgets. Knows nothing of models."""

from data.budget import (
           BudgetError,
           Packed,
           TokenStreams,
           check_budget,
           pack,
           take_budget,
           token_streams,
           validation_set,
)
from data.corpus import Corpus, CorpusError, Document, load_corpus
from data.tokenizer import SPECIAL_TOKENS, cache_root, get_tokenizer, token_byte_lengths, tokenizer_hash

__all__ = ["BudgetError", "Corpus", "CorpusError", "Document", "Packed", "SPECIAL_TOKENS", "TokenStreams",
           "cache_root", "check_budget", "get_tokenizer", "load_corpus", "pack", "take_budget", "token_byte_lengths",
           "token_streams", "tokenizer_hash", "validation_set"]
