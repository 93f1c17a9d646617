"""`LitEma`: an exponential moving average of a model's trainable parameters, kept as buffers.

The layout matches the original's (`vidtok.modules.ema.LitEma`, from latent-diffusion/sgm), so `model_ema.*`
entries of its checkpoints load here and ours load there:

- one buffer per parameter that required gradients when the EMA was built, named after the parameter with every
  `.` removed (`decoder.conv_out.conv.weight` -> `model_ema.decoderconv_outconvweight`);
- a float32 scalar buffer `decay` and an int32 scalar buffer `num_updates` (-1 when warm-up is off).

With warm-up on, update `n` uses `min(decay, (1 + n) / (10 + n))`, so the average follows the weights closely
during the first few hundred updates instead of remembering the initialisation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def shadow_name(param_name: str) -> str:
    """The buffer name of a parameter: buffer names may not contain `.`, so the dots are dropped."""
    return param_name.replace(".", "")


class LitEma(nn.Module):
    """Shadow copies of `model`'s trainable parameters, updated by calling the EMA with the model.

    Args:
        model: the module whose parameters with `requires_grad=True` are tracked (frozen ones are left out).
        decay: the EMA decay in [0, 1].
        use_num_updates: warm the decay up with the number of updates (see the module docstring).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay} (model.params.ema_decay)")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int))
        self.m_name2s_name: dict[str, str] = {}
        taken = {"decay", "num_updates"}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            s_name = shadow_name(name)
            if s_name in taken:
                raise ValueError(f"parameter {name!r} maps to the EMA buffer {s_name!r}, which is already taken")
            taken.add(s_name)
            self.m_name2s_name[name] = s_name
            self.register_buffer(s_name, param.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def reset_num_updates(self) -> None:
        """Restart the warm-up (the shadow values are kept)."""
        self.num_updates = torch.zeros_like(self.num_updates)

    def _tracked(self, model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
        for name, param in model.named_parameters():
            if param.requires_grad:
                if name not in self.m_name2s_name:
                    raise KeyError(
                        f"parameter {name!r} is trainable but was frozen (or absent) when the EMA was built"
                    )
                yield name, param

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA update towards `model`'s current parameters.

        Computed with tensor operations on the buffers' device, so no value is read back to the host (on a GPU
        that would wait for the whole step); in float64 as the original's Python floats are, so the factor is the
        same to the last bit.
        """
        warming_up = self.num_updates >= 0
        self.num_updates.add_(warming_up.to(self.num_updates.dtype))
        n = self.num_updates.to(torch.float64)
        decay = self.decay.to(torch.float64)
        decay = torch.where(warming_up, torch.minimum(decay, (1 + n) / (10 + n)), decay)
        one_minus_decay = (1.0 - decay).to(self.decay.dtype)
        shadows = dict(self.named_buffers())
        for name, param in self._tracked(model):
            shadow = shadows[self.m_name2s_name[name]]
            shadow.sub_(one_minus_decay * (shadow - param.to(shadow.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s tracked parameters with the averages."""
        shadows = dict(self.named_buffers())
        for name, param in self._tracked(model):
            param.copy_(shadows[self.m_name2s_name[name]])

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of `parameters`, to put back with `restore` after evaluating with the averages."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the values saved by `store` (same parameters, same order)."""
        params = list(parameters)
        if len(params) != len(self.collected_params):
            raise RuntimeError(f"restore got {len(params)} parameters but store kept {len(self.collected_params)}")
        for saved, param in zip(self.collected_params, params, strict=True):
            param.copy_(saved)
        self.collected_params = []
