"""VidTok's training loss: L1 + LPIPS reconstruction under a learned log-variance, a PatchGAN with LeCAM, and the
regularizer's own loss (KL or FSQ auxiliary).

The small pure GAN functions come first, then `GeneralLPIPSWithDiscriminator`, which an official YAML builds through
`loss_config: {target: vidtok.modules.losses.GeneralLPIPSWithDiscriminator, params: ...}`. Its state dict is, in
order, `logvar`, `perceptual_loss.*` (33 entries) and `discriminator.main.*` (22 with the 2D discriminator).

Formulas (z = logits, σ = sigmoid):
- hinge D loss   ½·(mean relu(1 − z_real) + mean relu(1 + z_fake))
- vanilla D loss ½·(mean softplus(−z_real) + mean softplus(z_fake))
- generator      mean over samples of BCE(σ(mean of the sample's logits), 1) = mean softplus(−z̄), or −mean z_fake
- LeCAM          mean relu(z_real − ema_fake)² + mean relu(ema_real − z_fake)², EMAs updated first (decay 0.999)
- NLL            rec = |x − x̂| + w_p·LPIPS(x, x̂);  nll = rec / exp(logvar) + logvar;  loss uses Σ nll / N
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vidtok.modules.reshape import batch_to_time, time_to_batch
from vidtok.training.discriminator import NLayerDiscriminator, NLayerDiscriminator3D
from vidtok.training.lpips import LPIPS

logger = logging.getLogger(__name__)


# --- pure GAN losses -----------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: ½·(mean relu(1 − real) + mean relu(1 + fake)); logits of any shape -> scalar."""
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: ½·(mean softplus(−real) + mean softplus(fake)) -> scalar."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` while `global_step < threshold`, `weight` from then on (switches the GAN on at `disc_start`)."""
    return value if global_step < threshold else weight


def non_saturate_gen_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: each sample's logits `[N, ...]` are averaged to one logit z̄_n, then
    mean_n BCE-with-logits(z̄_n, label 1) = mean_n softplus(−z̄_n) -> scalar."""
    per_sample = logits_fake.reshape(logits_fake.shape[0], -1).mean(dim=-1)  # [N]
    return F.binary_cross_entropy_with_logits(per_sample, torch.ones_like(per_sample))


class LeCAMEMA:
    """Exponential moving averages of the mean real and fake logits (the original's `LeCAM_EMA`).

    Kept outside the state dict, so they restart from `init` when training resumes. Each is a float64 scalar tensor
    on the logits' device: the original's Python-float arithmetic, bit for bit, without reading the mean back to the
    host (`.item()` waits for the GPU at every discriminator step).
    """

    def __init__(self, init: float = 0.0, decay: float = 0.999) -> None:
        self.logits_real_ema = torch.tensor(init, dtype=torch.float64)
        self.logits_fake_ema = torch.tensor(init, dtype=torch.float64)
        self.decay = decay

    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        """ema ← decay·ema + (1 − decay)·mean(logits), for real and fake."""
        self.logits_real_ema = self._step(self.logits_real_ema, logits_real)
        self.logits_fake_ema = self._step(self.logits_fake_ema, logits_fake)

    def _step(self, ema: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        mean = torch.mean(logits.detach()).to(torch.float64)
        return ema.to(mean.device) * self.decay + mean * (1 - self.decay)


def lecam_reg(logits_real: torch.Tensor, logits_fake: torch.Tensor, ema: LeCAMEMA) -> torch.Tensor:
    """LeCAM regulariser (Tseng et al., 2021): mean relu(real − ema_fake)² + mean relu(ema_real − fake)² -> scalar."""
    return torch.mean(F.relu(logits_real - ema.logits_fake_ema).pow(2)) + torch.mean(
        F.relu(ema.logits_real_ema - logits_fake).pow(2)
    )


# --- the loss module -----------------------------------------------------------------------------------------------


def _nhwc(frames: torch.Tensor) -> torch.Tensor:
    """`[N, C, H, W]` frames stored channels-last, as the loss's 2D networks take them (a view if they are)."""
    return frames.contiguous(memory_format=torch.channels_last)


DiscLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_DISC_LOSSES: dict[str, DiscLoss] = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
_DISC_TYPES = ("2d", "3d")


class GeneralLPIPSWithDiscriminator(nn.Module):
    """Generator and discriminator losses of a VidTok autoencoder.

    Args:
        disc_start: `global_step` from which the GAN terms count (optimizer steps, two per batch).
        logvar_init: initial value of the learned scalar log-variance.
        pixelloss_weight: accepted for config compatibility; unused, as in the original.
        disc_num_layers, disc_in_channels: discriminator depth and input channels.
        disc_factor: weight of the GAN terms once `disc_start` is reached; 0 turns the GAN off.
        disc_weight: multiplies the adaptive generator weight.
        disc_type: "2d" (per-frame PatchGAN) or "3d" (spatio-temporal PatchGAN).
        perceptual_weight: weight of LPIPS in the reconstruction term; 0 skips LPIPS.
        lecam_loss_weight: weight of the LeCAM regulariser in the discriminator loss; 0 disables it.
        disc_loss: "hinge" or "vanilla".
        scale_input_to_tgt_size: resize inputs (bicubic, antialiased) to the reconstruction's size first.
        dims: 2 for images `[B, C, H, W]`; 3 for videos `[B, C, T, H, W]`, whose frames are scored separately.
        learn_logvar: put `logvar` in the autoencoder's trainable parameters (otherwise it stays fixed).
        regularization_weights: weight per regularizer log key, e.g. `{"kl_loss": 1e-6, "aux_loss": 1.0}`.
        gen_loss_cross_entropy: non-saturating generator loss instead of −mean(logits).
        lpips_pretrained: load LPIPS's pretrained weights (False: random, touching no file; not in the original).
    """

    def __init__(
        self,
        disc_start: int,
        logvar_init: float = 0.0,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        disc_type: str = "3d",
        perceptual_weight: float = 1.0,
        lecam_loss_weight: float = 0.0,
        disc_loss: str = "hinge",
        scale_input_to_tgt_size: bool = False,
        dims: int = 2,
        learn_logvar: bool = False,
        regularization_weights: Mapping[str, float] | None = None,
        gen_loss_cross_entropy: bool = False,
        lpips_pretrained: bool = True,
    ) -> None:
        super().__init__()
        if disc_loss not in _DISC_LOSSES:
            raise ValueError(f"loss_config.params.disc_loss must be one of {sorted(_DISC_LOSSES)}, got {disc_loss!r}")
        if disc_type not in _DISC_TYPES:
            raise ValueError(f"loss_config.params.disc_type must be one of {_DISC_TYPES}, got {disc_type!r}")
        if dims not in (2, 3):
            raise ValueError(f"loss_config.params.dims must be 2 (images) or 3 (videos), got {dims!r}")
        self.dims = dims
        if dims == 3:
            logger.info("GeneralLPIPSWithDiscriminator: dims=3, so LPIPS scores every frame separately")
        self.scale_input_to_tgt_size = scale_input_to_tgt_size
        self.pixel_weight = pixelloss_weight
        self.perceptual_weight = perceptual_weight
        self.learn_logvar = learn_logvar
        self.disc_type = disc_type
        self.discriminator_iter_start = disc_start
        self.disc_loss = _DISC_LOSSES[disc_loss]
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.regularization_weights = dict(regularization_weights or {})
        self.gen_loss_cross_entropy = gen_loss_cross_entropy
        self.lecam_loss_weight = lecam_loss_weight
        self.lecam_ema = LeCAMEMA() if lecam_loss_weight > 0 else None

        # Built in the original's order (LPIPS, logvar, discriminator) so a seeded build draws the same random
        # numbers; the state dict lists `logvar` first anyway, since a module's own parameters precede its children.
        self.perceptual_loss = LPIPS(pretrained=lpips_pretrained).eval()
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=learn_logvar)
        disc_cls = NLayerDiscriminator if disc_type == "2d" else NLayerDiscriminator3D
        self.discriminator = disc_cls(input_nc=disc_in_channels, n_layers=disc_num_layers, use_actnorm=False)
        # The 2D networks run channels-last, the layout of the autoencoder's frames (`time_to_batch` of its output
        # is then a view, not a copy); the LPIPS VGG's forward and backward on 17×64² frames took 8.1-9.1 s there
        # against 10.4-11.4 s channels-first on this CPU, and channels-last is also cuDNN's fast layout on GPUs.
        self.perceptual_loss.to(memory_format=torch.channels_last)
        if disc_type == "2d":
            self.discriminator.to(memory_format=torch.channels_last)

    # --- parameter groups ------------------------------------------------------------------------------------------

    def get_trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the discriminator optimizer."""
        return self.discriminator.parameters()

    def get_trainable_autoencoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters this loss adds to the autoencoder optimizer: `logvar` when `learn_logvar`, else none."""
        if self.learn_logvar:
            yield self.logvar

    # --- helpers ---------------------------------------------------------------------------------------------------

    def calculate_adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """disc_weight · clamp(‖∂nll/∂W‖ / (‖∂g/∂W‖ + 1e-4), 0, 1e4), detached; W = the decoder's last weight.

        Balances the GAN gradient against the reconstruction gradient at the decoder output (Esser et al., 2021).
        """
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        return self._weight_from_grads(nll_grads, g_grads)

    def _weight_from_grads(self, nll_grads: torch.Tensor, g_grads: torch.Tensor) -> torch.Tensor:
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        d_weight = torch.clamp(d_weight, 0.0, 1e4).detach()
        return d_weight * self.discriminator_weight

    def _adaptive_weight_or_zero(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        """The adaptive weight whenever `disc_factor > 0` (before `disc_start` too: the original computes and logs
        it every step), or 0 when no gradient reaches `last_layer`. That is allowed only outside training (e.g.
        validation under `no_grad`); the original likewise falls back to 0 there and fails in training."""
        if self.disc_factor <= 0:
            return nll_loss.new_zeros(())
        if last_layer is not None and last_layer.requires_grad and nll_loss.requires_grad and g_loss.requires_grad:
            # allow_unused: a loss that does not reach last_layer gives None instead of raising
            nll_grads, g_grads = (
                torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)[0]
                for loss in (nll_loss, g_loss)
            )
            if nll_grads is not None and g_grads is not None:
                return self._weight_from_grads(nll_grads, g_grads)
        if self.training:
            raise RuntimeError(
                "the adaptive GAN weight needs gradients of the losses w.r.t. `last_layer` (the decoder's last conv "
                "weight, `model.get_last_layer()`): pass it, with autograd enabled, or call .eval() for validation"
            )
        return nll_loss.new_zeros(())

    def _to_frames(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T, H, W]` -> `[B*T, C, H, W]` when `dims=3`; images `[B, C, H, W]` pass through."""
        if x.ndim == 5:
            if self.dims != 3:
                raise ValueError(f"got a video {tuple(x.shape)} but loss_config.params.dims={self.dims}; set dims: 3")
            return time_to_batch(x)
        if x.ndim != 4:
            raise ValueError(f"expected [B, C, H, W] or [B, C, T, H, W], got shape {tuple(x.shape)}")
        return x

    def _resize_like(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Bicubic, antialiased resize of `inputs` to the reconstruction's spatial size (frame by frame for video)."""
        if inputs.ndim == 4:
            return F.interpolate(inputs, reconstructions.shape[2:], mode="bicubic", antialias=True)
        B, T = inputs.shape[0], inputs.shape[2]
        if reconstructions.shape[2] != T:
            raise ValueError(f"cannot resize {T} frames to {reconstructions.shape[2]}: only H and W are resized")
        frames = F.interpolate(time_to_batch(inputs), reconstructions.shape[3:], mode="bicubic", antialias=True)
        return batch_to_time(frames, B)

    @staticmethod
    def _disc_factor_log(value: float, like: torch.Tensor) -> torch.Tensor:
        """`value` as a float32 scalar on `like`'s device: validation logs with `sync_dist=True`, and NCCL's
        all-reduce accepts only CUDA tensors."""
        return torch.tensor(float(value), device=like.device)

    # --- forward ---------------------------------------------------------------------------------------------------

    def forward(
        self,
        regularization_log: Mapping[str, torch.Tensor],
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        split: str = "train",
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One loss evaluation.

        Args:
            regularization_log: the regularizer's log; keys in `regularization_weights` (`kl_loss`, `aux_loss`) are
                added to the generator loss.
            inputs, reconstructions: `[B, C, T, H, W]` (dims=3) or `[B, C, H, W]`, in [-1, 1].
            optimizer_idx: 0 = autoencoder (generator) loss, 1 = discriminator loss.
            global_step: optimizer steps so far; the GAN terms count from `disc_start`.
            last_layer: the decoder's last weight, for the adaptive GAN weight (generator step).
            split: prefix of the log keys ("train", "val", ...).
            weights: optional per-element weights of the NLL, broadcast against `[B*T, C, H, W]`.

        Returns:
            (scalar loss, log dict of detached tensors keyed `{split}/name`).
        """
        if self.scale_input_to_tgt_size:
            inputs = self._resize_like(inputs, reconstructions)
        if optimizer_idx == 0:
            return self._generator_loss(
                regularization_log, inputs, reconstructions, global_step, last_layer, split, weights
            )
        if optimizer_idx == 1:
            return self._discriminator_loss(inputs, reconstructions, global_step, split)
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx!r}")

    def _generator_loss(
        self,
        regularization_log: Mapping[str, torch.Tensor],
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        global_step: int,
        last_layer: torch.Tensor | None,
        split: str,
        weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        is_video = inputs.ndim == 5
        B = inputs.shape[0]
        if self.disc_type == "3d" and not is_video:
            raise ValueError("disc_type '3d' scores clips: inputs must be [B, C, T, H, W]")
        x, x_rec = self._to_frames(inputs), self._to_frames(reconstructions)  # [N, C, H, W], N = B*T for video

        rec_loss = torch.abs(x.contiguous() - x_rec.contiguous())  # [N, C, H, W]
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(_nhwc(x), _nhwc(x_rec))  # [N, 1, 1, 1], one value per frame
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        else:
            p_loss = x.new_zeros(1)

        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        # summed over pixels and channels, averaged over frames (N = B*T for video)
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]

        disc_input = batch_to_time(x_rec, B).contiguous() if self.disc_type == "3d" else _nhwc(x_rec)
        logits_fake = self.discriminator(disc_input)
        g_loss = non_saturate_gen_loss(logits_fake) if self.gen_loss_cross_entropy else -torch.mean(logits_fake)

        d_weight = self._adaptive_weight_or_zero(nll_loss, g_loss, last_layer)
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        # Before disc_start the GAN term is added times 0, as in the original, so the loss has the same value; its
        # gradient is exactly zero there, so the backward pass skips the discriminator (detached).
        gan_term = g_loss if disc_factor != 0 else g_loss.detach()
        loss = weighted_nll_loss + d_weight * disc_factor * gan_term

        log: dict[str, torch.Tensor] = {}
        for key, value in regularization_log.items():
            if key in self.regularization_weights:
                loss = loss + self.regularization_weights[key] * value
                log[f"{split}/{key}"] = value.detach().mean()
        log.update(
            {
                f"{split}/total_loss": loss.clone().detach().mean(),
                f"{split}/logvar": self.logvar.detach(),
                f"{split}/nll_loss": nll_loss.detach().mean(),
                f"{split}/rec_loss": rec_loss.detach().mean(),
                f"{split}/p_loss": p_loss.detach().mean(),
                f"{split}/d_weight": d_weight.detach(),
                f"{split}/disc_factor": self._disc_factor_log(disc_factor, g_loss),
                f"{split}/g_loss": g_loss.detach().mean(),
            }
        )
        return loss, log

    def _discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int, split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.disc_type == "2d":
            inputs, reconstructions = self._to_frames(inputs), self._to_frames(reconstructions)
        elif inputs.ndim != 5:
            raise ValueError("disc_type '3d' scores clips: inputs must be [B, C, T, H, W]")

        # two separate passes, so in training BatchNorm normalises real and fake batches by their own statistics
        layout = _nhwc if self.disc_type == "2d" else torch.Tensor.contiguous
        logits_real = self.discriminator(layout(inputs).detach())
        logits_fake = self.discriminator(layout(reconstructions).detach())

        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        non_saturated_d_loss = self.disc_loss(logits_real, logits_fake)
        lecam_loss = None
        if self.lecam_ema is not None:
            self.lecam_ema.update(logits_real, logits_fake)  # before the penalty, which reads the new EMAs
            lecam_loss = lecam_reg(logits_real, logits_fake, self.lecam_ema)
            d_loss = disc_factor * (lecam_loss * self.lecam_loss_weight + non_saturated_d_loss)
        else:
            d_loss = disc_factor * non_saturated_d_loss

        log = {
            f"{split}/disc_loss": d_loss.clone().detach().mean(),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
            f"{split}/disc_factor": self._disc_factor_log(disc_factor, d_loss),
            f"{split}/non_saturated_d_loss": non_saturated_d_loss.detach(),
        }
        if lecam_loss is not None:
            log[f"{split}/lecam_loss"] = lecam_loss.detach()
        return d_loss, log
