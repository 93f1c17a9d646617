"""The loss's path in the official configs (`vidtok.modules.losses.GeneralLPIPSWithDiscriminator`), kept so that
the original's YAML files and checkpoints' saved configs build unchanged; the loss lives in `vidtok.training.losses`."""

from vidtok.training.losses import GeneralLPIPSWithDiscriminator

__all__ = ["GeneralLPIPSWithDiscriminator"]
