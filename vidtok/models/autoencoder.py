"""`AutoencodingEngine`: a VidTok tokenizer (encoder, regularizer, decoder) as a LightningModule.

The engine only composes: encoder, decoder, regularizer and loss each come from their own `*_config` node, so an
official YAML builds it unchanged. The loss (LPIPS-VGG and a discriminator) is built only when training starts
(`setup("fit")`) or on request (`build_loss()`): inference never needs its weights or the network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from vidtok.checkpoint import check_compatible, drop_ignored, read_state_dict
from vidtok.modules.fsq import FSQRegularizer
from vidtok.training.engine_training import TrainingMixin
from vidtok.util import instantiate_from_config

logger = logging.getLogger(__name__)

# Checkpoint prefixes that hold training-only state. They load when that state exists and are set aside otherwise.
LOSS_PREFIX = "loss."
EMA_PREFIX = "model_ema."


class AutoencodingEngine(TrainingMixin, pl.LightningModule):
    """Video tokenizer. Videos are `[B, 3, T, H, W]` in [-1, 1].

    - KL models: `encode(x)` gives a continuous latent `[B, z, T', H/f, W/f]` (sampled from the posterior unless
      `sample=False`); FSQ models give the quantised codes, and `tokenize(x)` the integer tokens `[B, T', H', W']`.
    - `decode(z)` (or `decode(indices, decode_from_indices=True)`) gives the video back.
    - Frame counts: v1.0 causal models take T = 1 + k·tdf frames (17 for tdf 4), non-causal models T = k·tdf (16).
    """

    def __init__(
        self,
        *,
        encoder_config: Mapping,
        decoder_config: Mapping,
        regularizer_config: Mapping,
        loss_config: Mapping | None = None,
        optimizer_config: Mapping | None = None,
        lr_g_factor: float = 1.0,
        compile_model: bool = False,
        ckpt_path: str | None = None,
        ignore_keys: Iterable[str] = (),
        verbose: bool = True,
        ema_decay: float | None = None,
        monitor: str | None = None,
        mode: str | None = None,
        input_key: str = "jpg",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.encoder = instantiate_from_config(encoder_config)
        self.decoder = instantiate_from_config(decoder_config)
        self.regularization = instantiate_from_config(regularizer_config)
        self.loss_config = loss_config
        self.loss: torch.nn.Module | None = None
        self.optimizer_config = optimizer_config or {"target": "torch.optim.Adam"}
        self.lr_g_factor = lr_g_factor
        self.input_key = input_key
        self.ema_decay = ema_decay
        self.verbose = verbose
        if monitor is not None:
            self.monitor = monitor
        if mode is not None:
            self.mode = mode
        # weights of the loss / EMA read from a checkpoint before those modules exist
        self._deferred_state: dict[str, torch.Tensor] = {}
        self._check_latent_width()
        if compile_model:
            # in place, so state-dict keys stay the original's
            self.encoder.compile()
            self.decoder.compile()
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    # --- construction ---------------------------------------------------------------------------------------------

    def _check_latent_width(self) -> None:
        if isinstance(self.regularization, FSQRegularizer) and self.encoder.z_channels != self.regularization.dim:
            raise ValueError(
                f"FSQ levels {self.regularization.levels} need z_channels={self.regularization.dim}, but the encoder "
                f"has z_channels={self.encoder.z_channels}; set model.params.encoder_config.params.z_channels"
            )
        if self.decoder.z_channels != self.encoder.z_channels:
            raise ValueError(
                f"decoder z_channels ({self.decoder.z_channels}) != encoder z_channels ({self.encoder.z_channels})"
            )

    @property
    def is_causal(self) -> bool:
        return self.encoder.layout.causal

    @property
    def is_fsq(self) -> bool:
        return isinstance(self.regularization, FSQRegularizer)

    @property
    def time_downsample_factor(self) -> int:
        return self.encoder.time_downsample_factor

    @property
    def spatial_downsample_factor(self) -> int:
        return self.encoder.spatial_downsample_factor

    def build_loss(self, **overrides: Any) -> torch.nn.Module:
        """Build the training loss from `loss_config` (idempotent). `overrides` go to its constructor, e.g.
        `lpips_pretrained=False` for random LPIPS weights. Loss weights read from a checkpoint are loaded into it."""
        if self.loss is None:
            if self.loss_config is None:
                raise ValueError("this model was built without a loss_config, so it cannot be trained")
            self.loss = instantiate_from_config(self.loss_config, **overrides)
            self._load_deferred(LOSS_PREFIX, self.loss)
        return self.loss

    def _load_deferred(self, prefix: str, module: torch.nn.Module) -> None:
        state = {k[len(prefix):]: v for k, v in self._deferred_state.items() if k.startswith(prefix)}
        if not state:
            return
        check_compatible(module.state_dict(), state, f"the {prefix.rstrip('.')} weights of the checkpoint")
        module.load_state_dict(state)
        for k in list(self._deferred_state):
            if k.startswith(prefix):
                del self._deferred_state[k]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.build_loss()

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def init_from_ckpt(self, path: str | Path, ignore_keys: Iterable[str] = ()) -> None:
        """Load `path` (`.ckpt` with or without a `state_dict` wrapper, or `.safetensors`).

        Encoder/decoder keys must match exactly: a missing, unexpected or mis-shaped key raises an error naming it.
        `loss.*` (and `model_ema.*`) keys load into those modules when built, and are kept aside until then.
        """
        weights = drop_ignored(read_state_dict(path), ignore_keys)
        expected = self.state_dict()
        deferred = {
            k: v
            for k, v in weights.items()
            if (k.startswith(LOSS_PREFIX) and self.loss is None) or (k.startswith(EMA_PREFIX) and k not in expected)
        }
        weights = {k: v for k, v in weights.items() if k not in deferred}
        check_compatible(expected, weights, f"checkpoint {str(path)!r}")
        self.load_state_dict(weights)
        self._deferred_state = deferred
        logger.info(
            "restored %s (%d tensors; %d loss/EMA tensors kept for training)", path, len(weights), len(deferred)
        )

    # --- the tokenizer --------------------------------------------------------------------------------------------

    def _check_video(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"expected a video batch [B, C, T, H, W], got a tensor of shape {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        if C != self.encoder.in_channels:
            raise ValueError(f"the model takes {self.encoder.in_channels}-channel video, got {C} channels")
        self.check_clip_size(T, H, W)

    def check_clip_size(self, T: int, H: int | None = None, W: int | None = None) -> None:
        """Raise a ValueError unless clips of `T` frames of `H×W` fit the model's frame rules (sizes left out
        are not checked)."""
        f = self.spatial_downsample_factor
        if H is not None and W is not None and (H % f or W % f):
            raise ValueError(f"height and width must be multiples of {f} for this model, got {H}×{W}")
        tdf = self.time_downsample_factor
        layout = self.encoder.layout
        if layout.input_pad == "fixed" and (T - 1) % tdf:
            good = ((T - 1) // tdf) * tdf + 1
            shortened = self.decoder.output_frames(self.encoder.latent_frames(T))
            raise ValueError(
                f"this v1.0 causal model reconstructs clips of T = 1 + k·{tdf} frames (e.g. {good} or {good + tdf}), "
                f"got T={T}, which the original would silently shorten to {shortened} frames; trim or pad the clip"
            )
        if layout.input_pad == "none" and T % tdf:
            raise ValueError(
                f"this non-causal model needs T to be a multiple of {tdf}, got T={T} "
                f"(the original would drop the last {T % tdf} frame(s)); trim or pad the clip"
            )

    def encode(
        self, x: torch.Tensor, sample: bool | None = None, return_reg_log: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | torch.Tensor:
        """`[B, 3, T, H, W]` in [-1, 1] -> (`z` `[B, z, T', H/f, W/f]`, regularizer log).

        KL: `z` is a posterior sample (the original's behaviour) unless `sample=False`, which gives the mean;
        the log has `kl_loss`. FSQ: `z` holds the quantised codes; the log has `indices` `[B, T', H', W']`.
        """
        self._check_video(x)
        h = self.encoder(x)
        kwargs: dict[str, Any] = {"n_steps": self.global_step // 2, "compute_aux": self.loss is not None}
        if sample is not None and not self.is_fsq:
            kwargs["sample"] = sample
        z, reg_log = self.regularization(h, **kwargs)
        return (z, reg_log) if return_reg_log else z

    def decode(self, z: torch.Tensor, decode_from_indices: bool = False) -> torch.Tensor:
        """Latent `[B, z, T', H', W']` (or FSQ token indices `[B, T', H', W']` with `decode_from_indices=True`)
        -> video `[B, 3, T, H, W]`, unclamped."""
        if decode_from_indices:
            if not self.is_fsq:
                raise ValueError("decode_from_indices needs an FSQ model; this one has a KL latent")
            z = self.regularization.indices_to_codes(z).to(next(self.decoder.parameters()).dtype)
        if z.ndim != 5 or z.shape[1] != self.decoder.z_channels:
            raise ValueError(
                f"expected a latent [B, {self.decoder.z_channels}, T', H', W'], got shape {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Encode and decode: (`z`, reconstruction `[B, 3, T, H, W]`, regularizer log)."""
        if self.encoder.fix_encoder:
            with torch.no_grad():
                z, reg_log = self.encode(x)
        else:
            z, reg_log = self.encode(x)
        recon = self.decode(z)
        # a v1.1 decoder returns tdf·T' frames; the clip is the last T of them
        return z, recon[:, :, -x.shape[2]:], reg_log

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """FSQ token indices `[B, T', H', W']` (int32) of a video `[B, 3, T, H, W]`."""
        if not self.is_fsq:
            raise ValueError("tokenize needs an FSQ model; KL models give continuous latents: use encode()")
        _, reg_log = self.encode(x)
        return reg_log["indices"]

    def detokenize(self, indices: torch.Tensor) -> torch.Tensor:
        """Video `[B, 3, T, H, W]` from FSQ token indices `[B, T', H', W']`."""
        return self.decode(indices, decode_from_indices=True)

    # --- training seams -------------------------------------------------------------------------------------------

    def get_input(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = batch[self.input_key]
        return x.unsqueeze(2) if x.ndim == 4 else x

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.get_last_layer()

    def get_autoencoder_params(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        params += [p for p in self.decoder.parameters() if p.requires_grad]
        params += list(self.regularization.get_trainable_parameters())
        if self.loss is not None:
            params += list(self.loss.get_trainable_autoencoder_parameters())
        return params

    def get_discriminator_params(self) -> list[torch.nn.Parameter]:
        return list(self.build_loss().get_trainable_parameters())
