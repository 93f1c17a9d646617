"""Training behaviour of `AutoencodingEngine`: the original's manual GAN optimisation, validation, EMA, image logs.

Step semantics follow the original exactly, so official configs behave as they did there:

- each batch makes two optimiser steps (autoencoder, then discriminator), and Lightning's `global_step` counts
  optimiser steps, so it advances by 2 per batch. The FSQ entropy annealing therefore reads `global_step // 2`
  (batches), while the loss's `disc_start` compares against `global_step` itself: `disc_start: 20001` switches the
  GAN terms on after about 10k batches. `--max_steps` and `every_n_train_steps` count optimiser steps too;
  `val_check_interval` counts batches.
- gradients of each optimiser are clipped to a total norm of 20 before its step.
- optional EMA (`ema_decay`) of every trainable parameter, including the loss's (discriminator, `logvar`), stored
  under `model_ema.*` with the original's key names.

The loss is built lazily by the engine (`setup("fit")`); the EMA is built in `configure_model`, which Lightning
runs after `setup` and before it restores a checkpoint, so a resumed run finds every `loss.*` and `model_ema.*`
tensor a place to go.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from vidtok.training.allocator import heap_backed, memory_first
from vidtok.training.ema import LitEma
from vidtok.util import get_obj_from_str

logger = logging.getLogger(__name__)

GRAD_CLIP_NORM = 20.0  # max total gradient norm of each optimiser's parameters (the original's value)
EMA_KEY_PREFIX = "model_ema."


def video_psnr(x: torch.Tensor, xrec: torch.Tensor) -> torch.Tensor:
    """Mean per-frame PSNR (dB) of two `[B, C, T, H, W]` videos in [-1, 1], the evaluation protocol's formula.

    The reconstruction is clamped to [-1, 1], both are mapped to [0, 1], and each frame gives
    `-10·log10(mse + 1e-8)`; the result is the mean over all `B·T` frames.
    """
    x = (x.float().clamp(-1, 1) + 1) / 2
    xrec = (xrec.float().clamp(-1, 1) + 1) / 2
    mse = (x - xrec).pow(2).mean(dim=(1, 3, 4))  # [B, T]
    return (-10 * torch.log10(mse + 1e-8)).mean()


class TrainingMixin:
    """Lightning hooks of `AutoencodingEngine` (mixed in before `LightningModule`).

    Relies on the engine for `loss` / `build_loss()`, `ema_decay`, `optimizer_config`, `lr_g_factor`,
    `get_input`, `get_last_layer`, `get_autoencoder_params` and `get_discriminator_params`.
    """

    # Set by `vidtok.train.train` from `model.base_learning_rate` (scaled with --scale_lr).
    learning_rate: float | None = None

    # --- EMA ------------------------------------------------------------------------------------------------------

    @property
    def use_ema(self) -> bool:
        return self.ema_decay is not None

    @property
    def ema(self) -> LitEma | None:
        """The EMA module once built (`configure_model`), else `None`."""
        return self._modules.get("model_ema")

    def configure_model(self) -> None:
        """Build the EMA (over the loss's parameters too, as the original does) before a checkpoint is restored."""
        if self.use_ema and self.ema is None:
            self.build_loss()
            self.model_ema = LitEma(self, decay=self.ema_decay)
            logger.info("keeping an EMA (decay %s) of %d parameter tensors", self.ema_decay,
                        len(self.model_ema.m_name2s_name))
            self._load_ema_from_init_checkpoint()

    def _load_ema_from_init_checkpoint(self) -> None:
        """Load `model_ema.*` tensors that `init_from_ckpt` set aside, keeping the configured `decay`."""
        state = {k[len(EMA_KEY_PREFIX):]: v for k, v in self._deferred_state.items() if k.startswith(EMA_KEY_PREFIX)}
        if not state:
            return
        for key in [k for k in self._deferred_state if k.startswith(EMA_KEY_PREFIX)]:
            del self._deferred_state[key]
        state.pop("decay", None)
        expected = {k: v for k, v in self.model_ema.state_dict().items() if k != "decay"}
        usable = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
        if len(usable) < len(state) or len(usable) < len(expected):
            # e.g. the checkpoint's EMA tracked parameters that are frozen now (fix_encoder), or the reverse
            logger.warning(
                "the checkpoint's EMA has %d tensors, %d of which fit this model's EMA of %d; "
                "loading those and starting the others from the current weights",
                len(state), len(usable), len(expected),
            )
        self.model_ema.load_state_dict(usable, strict=False)

    @contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Run the body with the EMA weights in place of the trained ones (a no-op without EMA)."""
        ema = self.ema
        if ema is None:
            yield
            return
        ema.store(self.parameters())
        ema.copy_to(self)
        if context is not None:
            logger.info("%s: switched to EMA weights", context)
        try:
            yield
        finally:
            ema.restore(self.parameters())
            if context is not None:
                logger.info("%s: restored training weights", context)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.model_ema(self)

    # --- optimisation ---------------------------------------------------------------------------------------------

    def _make_optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """The configured optimiser, fused where PyTorch has a fused kernel for it (Adam, AdamW, SGD on CPU and
        CUDA) and the config chose no implementation (`fused` / `foreach`) itself.

        The fused step is the same update (to float rounding) in one pass over each parameter's four tensors; the
        default one runs about ten operations with temporaries per parameter, and on CPU reads its step count back
        with `.item()` for every parameter."""
        cfg = self.optimizer_config
        cls = get_obj_from_str(cfg["target"])
        kwargs = dict(cfg.get("params") or {})
        if (
            "fused" in inspect.signature(cls).parameters
            and not {"fused", "foreach"} & set(kwargs)
            and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        ):
            kwargs["fused"] = True
        return cls(params, lr=lr, **kwargs)

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list]:
        """Two optimisers (`optimizer_config`, Adam by default): autoencoder at `lr_g_factor·lr`, discriminator at
        `lr`, where `lr` is `learning_rate` (set from `model.base_learning_rate`). No scheduler."""
        if self.learning_rate is None:
            raise ValueError(
                "learning_rate is not set; vidtok.train.train sets it from model.base_learning_rate "
                "(set it on the model yourself when building the Trainer by hand)"
            )
        ae_params = self.get_autoencoder_params()
        if not ae_params:
            raise ValueError("nothing to train: fix_encoder and fix_decoder are both true in encoder_config.params")
        opt_ae = self._make_optimizer(ae_params, (self.lr_g_factor if self.lr_g_factor is not None else 1.0)
                                      * self.learning_rate)
        opt_disc = self._make_optimizer(self.get_discriminator_params(), self.learning_rate)
        return [opt_ae, opt_disc], []

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """One batch: an autoencoder step then a discriminator step. Returns the detached losses and the loss's log
        (what `on_train_batch_end` callbacks receive as `outputs`)."""
        with self._cpu_allocator(backward=False):
            return self._training_step(batch)

    def _cpu_allocator(self, backward: bool) -> AbstractContextManager[object]:
        """glibc's setting (`vidtok.training.allocator`) for the whole step or for the autoencoder's backward pass:
        with checkpointing, which puts memory first, freed blocks go back at once over the step (`memory_first`);
        otherwise the backward pass's temporaries reuse heap memory instead of page-faulting fresh mappings
        (`heap_backed`: the heap holds what it frees until the pass ends). Off the CPU, neither."""
        if self.device.type != "cpu" or self.encoder.use_checkpoint == backward:
            return nullcontext()
        return heap_backed() if backward else memory_first()

    def _training_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        opt_g, opt_d = self.optimizers()
        # The last batch's gradients are read by nothing before this batch's backward passes: freeing them before
        # the forward (the original freed them just before each backward) keeps them out of the forward pass and the
        # adaptive weight's pass, which hold every saved activation.
        opt_g.zero_grad()
        opt_d.zero_grad()
        x = self.get_input(batch)
        _, xrec, reg_log = self(x)

        # autoencoder (generator) step: optimizer_idx 0
        self.toggle_optimizer(opt_g)
        aeloss, log_ae = self.loss(
            reg_log, x, xrec, 0, self.global_step, last_layer=self.get_last_layer(), split="train"
        )
        with self._cpu_allocator(backward=True):
            self.manual_backward(aeloss)
        torch.nn.utils.clip_grad_norm_(self.get_autoencoder_params(), GRAD_CLIP_NORM)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        # discriminator step: optimizer_idx 1, at global_step + 1 (the autoencoder step has been counted)
        self.toggle_optimizer(opt_d)
        discloss, log_disc = self.loss(
            reg_log, x, xrec, 1, self.global_step, last_layer=self.get_last_layer(), split="train"
        )
        self.manual_backward(discloss)
        torch.nn.utils.clip_grad_norm_(self.get_discriminator_params(), GRAD_CLIP_NORM)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        batch_size = x.shape[0]
        self.log_dict({"train/aeloss": aeloss, "train/discloss": discloss}, prog_bar=True, logger=True,
                      on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict({**log_ae, **log_disc}, prog_bar=False, logger=True, on_step=True, on_epoch=True,
                      batch_size=batch_size)
        self.log("lr_abs", opt_g.param_groups[0]["lr"], prog_bar=True, logger=True, on_step=True, on_epoch=False,
                 sync_dist=True)
        return {"train/aeloss": aeloss.detach(), "train/discloss": discloss.detach(), **log_ae, **log_disc}

    # --- validation -----------------------------------------------------------------------------------------------

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Log `val/*` (the loss's keys, `val/rec_loss`, `val/psnr`); with EMA also `val_ema/*`."""
        log = self._validation_step(batch, "val")
        if self.ema is not None:
            with self.ema_scope():
                log.update(self._validation_step(batch, "val_ema"))
        return log

    def _validation_step(self, batch: Mapping[str, Any], split: str) -> dict[str, torch.Tensor]:
        x = self.get_input(batch)
        _, xrec, reg_log = self(x)
        last_layer = self.get_last_layer()
        _, log = self.loss(reg_log, x, xrec, 0, self.global_step, last_layer=last_layer, split=split)
        _, log_disc = self.loss(reg_log, x, xrec, 1, self.global_step, last_layer=last_layer, split=split)
        log = {**log, **log_disc, f"{split}/psnr": video_psnr(x, xrec)}
        # sync_dist so every rank sees the same monitored value (ModelCheckpoint ranks by val/rec_loss)
        self.log_dict(log, sync_dist=True, batch_size=x.shape[0])
        return log

    # --- image and video logs -------------------------------------------------------------------------------------

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], **kwargs: Any) -> dict[str, torch.Tensor]:
        """`inputs`, `recs` (and `recs_ema` with EMA) as `[B, C, T, H, W]` in about [-1, 1], for
        `vidtok.modules.logger.ImageVideoLogger`. Extra keyword arguments (`split`, layout options) are ignored."""
        x = self.get_input(batch)
        log = {"inputs": x, "recs": self._reconstruct_without_aux(x)}
        if self.ema is not None:
            with self.ema_scope():
                log["recs_ema"] = self._reconstruct_without_aux(x)
        return log

    def _reconstruct_without_aux(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and decode without the regularizer's auxiliary losses. The image logger runs on rank 0 only, and
        the FSQ entropy loss all-reduces across DDP ranks, which would wait for ranks that never call it."""
        self._check_video(x)
        z, _ = self.regularization(self.encoder(x), n_steps=self.global_step // 2, compute_aux=False)
        return self.decode(z)
