"""vidtok: VidTok video tokenizers (continuous KL and discrete FSQ), checkpoint-compatible with the original."""

from vidtok.api import load_config, load_model_from_config

__all__ = ["load_config", "load_model_from_config"]
