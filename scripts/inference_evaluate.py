"""Reconstruction metrics over a folder of videos (the evaluation CLI is being written; the loader is here so that
`from scripts.inference_evaluate import load_model_from_config` works as in the original's README)."""

from vidtok.api import load_model_from_config

__all__ = ["load_model_from_config"]
