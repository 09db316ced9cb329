"""Plain PyTorch: the backbone, attention kinds and ops, objectives and samplers. No Lightning, no files."""

from models.config import PRESETS, ModelConfig
from models.transformer import KVCache, Transformer, count_params

__all__ = ["PRESETS", "KVCache", "ModelConfig", "Transformer", "count_params"]
