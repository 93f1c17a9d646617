"""The official regularizer names (`regularizer_config.target` in the VidTok YAMLs).

Both follow one contract: `forward(z, n_steps=…, compute_aux=…) -> (z_out, log)`, where `log` carries the
training loss terms (`kl_loss` or `aux_loss`) and, for FSQ, the token `indices`.
"""

from .fsq import FSQRegularizer
from .gaussian import DiagonalGaussianRegularizer

__all__ = ["DiagonalGaussianRegularizer", "FSQRegularizer"]
