"""Finite Scalar Quantization (Mentzer et al., 2023, "FSQ: VQ-VAE Made Simple"), as VidTok uses it.

Each latent channel c is bounded to (-L_c/2, L_c/2) with a shifted tanh, rounded to an integer (straight-through
gradient) and rescaled to [-1, 1). With all levels 8 the codes are {-1, -0.75, …, 0.75}. A position's token index
is the mixed-radix number of its digits (code·L//2 + L//2), channel 0 least significant.

Training adds the entropy penalty of MAGVIT-v2 and a commitment loss; they need a (positions × codebook) matrix,
so they are computed only when asked for (`compute_aux=True`), never at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round half to even, with the identity as gradient."""
    return z + (z.round() - z).detach()


def entropy(prob: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Entropy over the last axis; log clamped at `eps` as in the reference implementation."""
    return (-prob * prob.clamp(min=eps).log()).sum(dim=-1)


def _distributed_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t


class FSQRegularizer(nn.Module):
    """`[B, d, T, H, W]` -> (codes `[B, d, T, H, W]`, {"indices": int32 `[B, T, H, W]`, "aux_loss": scalar}).

    `d` must equal `len(levels)`: VidTok uses no projection in or out of the codebook space.
    """

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        num_codebooks: int = 1,
        keep_num_codebooks_dim: bool | None = None,
        scale: float | None = None,
        entropy_loss_weight: float = 0.0,
        entropy_loss_annealing_steps: int = 0,
        entropy_loss_annealing_factor: float = 1.0,
        commitment_loss_weight: float = 0.0,
        diversity_gamma: float = 1.0,
    ):
        super().__init__()
        levels = [int(v) for v in levels]
        if num_codebooks != 1 or keep_num_codebooks_dim:
            raise ValueError(f"FSQRegularizer supports one codebook (num_codebooks=1), got {num_codebooks}")
        if dim is not None and dim != len(levels):
            raise ValueError(
                f"FSQRegularizer has no projection: dim ({dim}) must equal len(levels) ({len(levels)}); drop `dim`"
            )
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = int(torch.tensor(levels).prod())
        self.entropy_loss_weight = entropy_loss_weight
        self.entropy_loss_annealing_steps = entropy_loss_annealing_steps
        self.entropy_loss_annealing_factor = entropy_loss_annealing_factor
        self.commitment_loss_weight = commitment_loss_weight
        self.diversity_gamma = diversity_gamma
        # non-persistent: FSQ adds no keys to a checkpoint, like the original
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32), persistent=False)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), dim=0).to(torch.int32)
        self.register_buffer("_basis", basis, persistent=False)

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        return []

    # --- the quantizer, on channels-last `[..., d]` tensors -------------------------------------------------------

    def bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        half_l = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return round_ste(self.bound(z)) / (self._levels // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half_width = self._levels // 2
        digits = codes * half_width + half_width
        return (digits * self._basis).sum(dim=-1).to(torch.int32)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices `[B, T, H, W]` (any integer dtype) -> codes `[B, d, T, H, W]` in float32."""
        if indices.is_floating_point():
            raise TypeError(f"FSQ indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"FSQ indices must lie in [0, {self.codebook_size}) for levels {self.levels}, "
                f"got [{int(indices.min())}, {int(indices.max())}]"
            )
        digits = (indices.long()[..., None] // self._basis) % self._levels
        half_width = self._levels // 2
        codes = (digits - half_width) / half_width
        return codes.movedim(-1, 1).float()

    # --- training losses ------------------------------------------------------------------------------------------

    def entropy_weight(self, n_steps: int) -> float:
        """Entropy-loss weight, annealed linearly from `factor·weight` to `weight` over the first steps."""
        if n_steps >= self.entropy_loss_annealing_steps:
            return self.entropy_loss_weight
        start = self.entropy_loss_annealing_factor * self.entropy_loss_weight
        return start - (n_steps / self.entropy_loss_annealing_steps) * (start - self.entropy_loss_weight)

    def implicit_codebook(self, device: torch.device) -> torch.Tensor:
        """Every code, `[codebook_size, d]`, built on demand (it is large: 262,144 × 6 for VidTok's biggest)."""
        indices = torch.arange(self.codebook_size, device=device)
        return self.indices_to_codes(indices[:, None]).squeeze(-1)

    def aux_loss(self, z: torch.Tensor, codes: torch.Tensor, n_steps: int, inv_temperature: float) -> torch.Tensor:
        """Entropy penalty (low per-position entropy, high codebook entropy) plus commitment. `z`, `codes`: `[N, d]`."""
        if self.entropy_loss_weight > 0:
            # 2·z·c stands in for -‖z - c‖²: equal up to ‖z‖² (softmax ignores it) and ‖c‖², which the reference
            # implementation drops too, so the losses match the original's
            logits = 2 * inv_temperature * z @ self.implicit_codebook(z.device).T  # [N, codebook]
            prob = logits.softmax(dim=-1)
            per_sample_entropy = entropy(prob).mean()
            codebook_entropy = entropy(_distributed_mean(prob.mean(dim=0))).mean()
            entropy_loss = (per_sample_entropy - self.diversity_gamma * codebook_entropy) * self.entropy_weight(n_steps)
        else:
            entropy_loss = z.new_zeros(())
        commit = F.mse_loss(z, codes.detach())
        return entropy_loss + commit * self.commitment_loss_weight

    def forward(
        self, z: torch.Tensor, n_steps: int = 0, inv_temperature: float = 100.0, compute_aux: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if z.shape[1] != self.dim:
            raise ValueError(
                f"FSQ with levels {self.levels} quantizes {self.dim} channels, got a latent with {z.shape[1]}; "
                f"set the encoder's z_channels to {self.dim}"
            )
        orig_dtype = z.dtype
        with torch.autocast(z.device.type, enabled=False):
            zf = z.float().movedim(1, -1)  # [B, T, H, W, d]
            codes = self.quantize(zf)
            indices = self.codes_to_indices(codes)
            if compute_aux and (self.entropy_loss_weight > 0 or self.commitment_loss_weight > 0):
                aux = self.aux_loss(zf.reshape(-1, self.dim), codes.reshape(-1, self.dim), n_steps, inv_temperature)
            else:
                aux = zf.new_zeros(())
        return codes.to(orig_dtype).movedim(-1, 1), {"indices": indices, "aux_loss": aux}
