"""LPIPS with a VGG16 backbone (Zhang et al., 2018), laid out as VidTok's training loss stores it.

The state dict holds exactly `scaling_layer.{shift,scale}`, `net.slice{1..5}.<vgg index>.{weight,bias}` (torchvision's
`vgg16().features` indices) and `lin{0..4}.model.1.weight`, so the `loss.perceptual_loss.*` entries of an official
checkpoint load unchanged. Unlike the `lpips` package, no second `lins` list re-registers the linear layers.

Distance: both images are shifted and scaled per channel, run through VGG16 up to relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3; each feature map is unit-normalised over channels, the squared difference is weighted per channel by a
1×1 conv, averaged over space and summed over the five layers.

Weights (`pretrained=True`) come from two local files; nothing is downloaded:
- the VGG16 ImageNet backbone `vgg16-397923af.pth`: `$VIDTOK_VGG16_PATH`, else torchvision's cache
  `<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth`;
- the LPIPS v0.1 linear layers `vgg.pth`: `$VIDTOK_LPIPS_PATH`, else the copy shipped in the `lpips` pip package,
  else `./checkpoints/lpips/vgg.pth` (where the original VidTok downloads it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"
VGG16_ENV = "VIDTOK_VGG16_PATH"
LPIPS_FILENAME = "vgg.pth"
LPIPS_MD5 = "d507d7349b931f0638a25a48a722f98a"
LPIPS_ENV = "VIDTOK_LPIPS_PATH"

# Channels of the five tapped VGG16 layers, and the `features` index ranges that end at each tap (relu1_2 … relu5_3).
VGG16_CHANNELS = (64, 128, 256, 512, 512)
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


@dataclass(frozen=True)
class WeightFile:
    """One weight file LPIPS needs: the paths tried in order, and how a user provides it."""

    what: str
    filename: str
    candidates: tuple[Path, ...]
    fix: str

    def resolve(self) -> Path | None:
        """The first candidate that exists, or None."""
        return next((p for p in self.candidates if p.is_file()), None)

    def describe_missing(self) -> str:
        looked = ", ".join(str(p) for p in self.candidates) or "(nowhere: no candidate location)"
        return f"{self.what} '{self.filename}' not found; looked at: {looked}. Fix: {self.fix}"


def _packaged_lpips_weights() -> Path | None:
    """`lpips/weights/v0.1/vgg.pth` inside the installed `lpips` package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / LPIPS_FILENAME


def lpips_weight_paths() -> dict[str, WeightFile]:
    """Where LPIPS looks for its two files: `{"vgg16": ..., "lpips": ...}`, candidates in the order tried.

    An environment variable, when set, is the only candidate for its file, so a typo in it is reported rather than
    silently replaced by another copy.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    vgg_env = os.environ.get(VGG16_ENV)
    vgg16 = WeightFile(
        what="VGG16 ImageNet backbone (torchvision)",
        filename=VGG16_FILENAME,
        candidates=(Path(vgg_env),) if vgg_env else (hub_file,),
        fix=(
            f"download {VGG16_URL} to {hub_file} (torchvision's cache, moved by $TORCH_HOME) "
            f"or set {VGG16_ENV} to the file"
        ),
    )
    lpips_env = os.environ.get(LPIPS_ENV)
    if lpips_env:
        lpips_candidates: tuple[Path, ...] = (Path(lpips_env),)
    else:
        packaged = _packaged_lpips_weights()
        original_spot = Path.cwd() / "checkpoints" / "lpips" / LPIPS_FILENAME  # where the original downloads it
        lpips_candidates = (*((packaged,) if packaged else ()), original_spot)
    lpips = WeightFile(
        what=f"LPIPS v0.1 VGG linear layers (md5 {LPIPS_MD5})",
        filename=LPIPS_FILENAME,
        candidates=lpips_candidates,
        fix=f"`pip install lpips` (it ships lpips/weights/v0.1/{LPIPS_FILENAME}) or set {LPIPS_ENV} to the file",
    )
    return {"vgg16": vgg16, "lpips": lpips}


def find_lpips_weights() -> tuple[Path, Path]:
    """(VGG16 backbone file, LPIPS linear-layer file). Raises FileNotFoundError listing every missing file."""
    files = lpips_weight_paths()
    found = {name: f.resolve() for name, f in files.items()}
    missing = [files[name].describe_missing() for name, path in found.items() if path is None]
    if missing:
        hint = "For random weights (tests, or when a checkpoint's loss.* weights will be loaded), pass "
        hint += "pretrained=False, i.e. `lpips_pretrained: false` in the loss_config params."
        raise FileNotFoundError("LPIPS cannot load its pretrained weights.\n" + "\n".join(missing) + "\n" + hint)
    return found["vgg16"], found["lpips"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """`[N, C, H, W]` divided by its L2 norm over channels at each position."""
    norm = torch.sqrt(torch.sum(x**2, dim=1, keepdim=True))
    return x / (norm + eps)


def spatial_average(x: torch.Tensor) -> torch.Tensor:
    """`[N, C, H, W]` -> `[N, C, 1, 1]`."""
    return x.mean(dim=(2, 3), keepdim=True)


class ScalingLayer(nn.Module):
    """Maps [-1, 1] images to the statistics the LPIPS VGG expects: `(x - shift) / scale` per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Per-channel weighting of a squared feature difference: Dropout then a bias-free 1×1 conv to one channel.

    The Dropout (p=0.5) sits at index 0 so the conv's key is `model.1.weight`, as in the LPIPS weight file.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, use_dropout: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class VGG16Features(nn.Module):
    """torchvision's VGG16 `features` cut after each of the five tapped ReLUs; `slice{k}.{i}` keeps index `i`."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        for k, (start, stop) in enumerate(VGG16_SLICES, start=1):
            part = nn.Sequential()
            for i in range(start, stop):
                part.add_module(str(i), features[i])
            self.add_module(f"slice{k}", part)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """`[N, 3, H, W]` -> five maps `[N, C_k, H/2^(k-1), W/2^(k-1)]` (relu1_2 … relu5_3)."""
        outputs = []
        for k in range(1, len(VGG16_SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            outputs.append(x)
        return outputs


def _load_vgg16_features(features: nn.Sequential, path: Path) -> None:
    """Load the `features.*` entries of a torchvision VGG16 state dict (the classifier is not needed)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not wanted:
        raise ValueError(f"{path} has no 'features.*' entries; expected torchvision's VGG16 state dict ({VGG16_URL})")
    features.load_state_dict(wanted)  # strict: every conv of the backbone must be present, with its shape


def _vgg16_features(path: Path | None) -> nn.Sequential:
    """torchvision's `vgg16(weights=None).features`, loaded from `path`, or randomly initialised as torchvision does
    (Kaiming-normal fan-out convs, zero biases) when `path` is None."""
    # Built on the meta device so the unused 120M-parameter classifier is never allocated or initialised (~1 s).
    with torch.device("meta"):
        features = torchvision.models.vgg16(weights=None).features
    features = features.to_empty(device="cpu")
    if path is not None:
        _load_vgg16_features(features, path)
        return features
    for module in features:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return features


class LPIPS(nn.Module):
    """Learned perceptual distance between two image batches `[N, 3, H, W]` in [-1, 1] -> `[N, 1, 1, 1]`.

    Args:
        pretrained: load the VGG16 backbone and the LPIPS linear layers from local files (see module docstring);
            raises FileNotFoundError naming each missing file before building anything. False: random weights and
            no file access (tests, or when a checkpoint will overwrite them).
        use_dropout: keep the Dropout in front of each linear layer, as VidTok does.

    All parameters are frozen and the module starts in eval mode. Like the original, it follows its parent's
    `train()`/`eval()`: inside a training loss the linear layers' Dropout is active.
    """

    def __init__(self, pretrained: bool = True, use_dropout: bool = True) -> None:
        super().__init__()
        # Find the files first: a missing file must fail fast, before the ~1 s VGG16 build.
        paths = find_lpips_weights() if pretrained else None

        self.scaling_layer = ScalingLayer()
        self.chns = VGG16_CHANNELS
        self.net = VGG16Features(_vgg16_features(paths[0] if paths is not None else None))
        for i, chn in enumerate(self.chns):
            self.add_module(f"lin{i}", NetLinLayer(chn, use_dropout=use_dropout))

        if paths is not None:
            self._load_linear_layers(paths[1])
            logger.info("LPIPS: VGG16 backbone from %s, linear layers from %s", paths[0], paths[1])
        else:
            self._init_random_linear_layers()
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def _linear_layers(self) -> list[NetLinLayer]:
        return [getattr(self, f"lin{i}") for i in range(len(self.chns))]

    def _init_random_linear_layers(self) -> None:
        # Trained LPIPS weights are all positive; a negative weight would let the "distance" go below zero.
        with torch.no_grad():
            for lin in self._linear_layers():
                lin.model[-1].weight.abs_()

    def _load_linear_layers(self, path: Path) -> None:
        digest = _md5(path)
        if digest != LPIPS_MD5:
            logger.warning(
                "%s has md5 %s, not the LPIPS v0.1 VGG file's %s; loading it anyway", path, digest, LPIPS_MD5
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = {f"lin{i}.model.1.weight" for i in range(len(self.chns))}
        if set(state) != expected:
            raise ValueError(f"{path} holds keys {sorted(state)}, expected the LPIPS linear layers {sorted(expected)}")
        # strict=False: the file holds only the linear layers; the key check above guards against anything else.
        self.load_state_dict(state, strict=False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`input`, `target`: `[N, 3, H, W]` in [-1, 1] -> per-sample distance `[N, 1, 1, 1]`."""
        feats0 = self.net(self.scaling_layer(input))
        feats1 = self.net(self.scaling_layer(target))
        per_layer = []
        for lin, f0, f1 in zip(self._linear_layers(), feats0, feats1, strict=True):
            diff = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2  # [N, C_k, H_k, W_k]
            per_layer.append(spatial_average(lin(diff)))  # [N, 1, 1, 1]
        # summed left to right, layer 0 first, as the original accumulates
        return sum(per_layer[1:], per_layer[0])
