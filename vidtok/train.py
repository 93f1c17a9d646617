"""Training a VidTok tokenizer from a merged config: `train(config, logdir)` builds the model, data and Trainer.

`main.py` is the command line around it (the original's flags); tests and notebooks call `train` directly.

The config has the official YAMLs' three sections::

    model:      base_learning_rate, target (AutoencodingEngine), params
    data:       target (DataModuleFromConfig), params (batch_size, num_workers, train, validation)
    lightning:  trainer (Trainer kwargs), strategy, modelcheckpoint, callbacks, logger (all optional)

What `train` adds around `trainer.fit`, following the original's `main.py`:

- learning rate `base_learning_rate` (× accumulate × devices × batch size with `scale_lr`) on `model.learning_rate`;
- the loss is built before anything reads data, so missing LPIPS weights stop the run at start-up;
- TensorBoard logging (or Weights & Biases), `ValidatedModelCheckpoint` into `<logdir>/checkpoints` (`last.ckpt`,
  the 3 best by `val/rec_loss` of the same step, `every_n_train_steps`), the image/video logger, a learning-rate
  monitor and a count of the videos the dataset skipped;
- the merged config written to `<logdir>/configs/<timestamp>-project.yaml` and `-lightning.yaml`, which `-r`
  reloads.

Where it deliberately differs: the accelerator is `auto` (the original forces GPU), `bf16` precision falls back to
32-bit where the hardware has no bfloat16, and the YAML's DDP strategy is used only when more than one process
trains.
"""

from __future__ import annotations

import copy
import datetime
import glob
import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vidtok.distributed import leave_process_group
from vidtok.errors import ConfigError
from vidtok.util import check_config_targets, get_obj_from_str, read_yaml_config

logger = logging.getLogger(__name__)

# The package our Trainer comes from; configs may name either spelling of it.
LIGHTNING_PACKAGES = ("lightning.pytorch.", "pytorch_lightning.")
TRAINER_PACKAGE = pl.__name__ + "."
DDP_TIMEOUT = datetime.timedelta(seconds=5400)  # the original's process-group timeout
# Run timestamp shared with the worker processes Lightning launches for DDP, so they agree on the logdir.
TIMESTAMP_ENV = "VIDTOK_RUN_TIMESTAMP"
# Every timestamp this process has used: two runs of one process never share a run folder.
_ISSUED_TIMESTAMPS: set[str] = set()


# --- run naming and resuming ---------------------------------------------------------------------------------------


def _launched_rank() -> bool:
    """Whether Lightning's DDP launcher started this process to train one rank (it re-runs the command line with
    `LOCAL_RANK` set to 1, 2, ...; the launching process itself is rank 0)."""
    return os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0")


def run_timestamp() -> str:
    """`%Y-%m-%dT%H-%M-%S`, new for every run this process starts (waiting for the clock's next second rather than
    repeating a value it gave out). A rank that Lightning's DDP launcher started takes the launcher's value from
    `VIDTOK_RUN_TIMESTAMP` instead, so that all ranks agree on the run folder."""
    inherited = os.environ.get(TIMESTAMP_ENV)
    if inherited and _launched_rank() and inherited not in _ISSUED_TIMESTAMPS:
        _ISSUED_TIMESTAMPS.add(inherited)
        return inherited
    while True:
        now = datetime.datetime.now()
        stamp = now.strftime("%Y-%m-%dT%H-%M-%S")
        if stamp not in _ISSUED_TIMESTAMPS:
            break
        time.sleep(1 - now.microsecond / 1e6)
    _ISSUED_TIMESTAMPS.add(stamp)
    os.environ[TIMESTAMP_ENV] = stamp  # for the ranks the launcher starts from this process
    return stamp


def run_name(configs: Sequence[str], name: str = "", postfix: str = "", no_date: bool = False,
             now: str | None = None) -> str:
    """`{now}_{name}{postfix}`, where `name` defaults to the first config's file stem (the original's naming)."""
    if not name and configs:
        name = Path(configs[0]).stem
    label = (f"_{name}" if name else "") + postfix
    if no_date:
        return label.removeprefix("_") or "run"
    return (now or run_timestamp()) + label


@dataclass
class ResumePoint:
    """Where `-r` points: the run's folder, its checkpoint and the configs that run saved."""

    logdir: Path
    ckpt: Path
    configs: list[str] = field(default_factory=list)


def find_resume(resume: str | Path) -> ResumePoint:
    """Resolve `-r LOGDIR` (its newest `checkpoints/last*.ckpt`) or `-r LOGDIR/checkpoints/X.ckpt`."""
    path = Path(resume)
    if path.is_file():
        ckpt = path
        logdir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif path.is_dir():
        logdir = path
        candidates = sorted(glob.glob(str(path / "checkpoints" / "last*.ckpt")), key=os.path.getmtime)
        if not candidates:
            raise FileNotFoundError(
                f"cannot resume from {str(path)!r}: no checkpoints/last*.ckpt in it; the run saved no checkpoint "
                "yet (see lightning.modelcheckpoint.params.every_n_train_steps), or pass a .ckpt file"
            )
        ckpt = Path(candidates[-1])
    else:
        raise FileNotFoundError(f"cannot resume from {str(path)!r}: no such run folder or checkpoint")
    configs = sorted(glob.glob(str(logdir / "configs" / "*.yaml")))
    if not configs:
        logger.warning("resuming from %s, but %s/configs holds no saved config; pass -b", ckpt, logdir)
    return ResumePoint(logdir=logdir, ckpt=ckpt, configs=configs)


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files left to right, then `key.sub=value` overrides (a leading `--` is allowed)."""
    if not paths:
        raise ValueError("no config given: pass one or more YAML files with -b/--base")
    configs = [read_yaml_config(p) for p in paths]
    dotlist = [o[2:] if o.startswith("--") else o for o in overrides]
    bad = [o for o in dotlist if "=" not in o]
    if bad:
        raise ValueError(f"unrecognised arguments {bad}: config overrides look like model.params.key=value")
    return OmegaConf.merge(*configs, OmegaConf.from_dotlist(dotlist))


# --- building objects ------------------------------------------------------------------------------------------------


def lightning_target(target: str) -> str:
    """Rewrite `lightning.pytorch.X` / `pytorch_lightning.X` to the package our Trainer comes from: the official
    YAMLs name `lightning.pytorch.strategies.DDPStrategy`, and a Trainer only accepts its own package's classes."""
    for prefix in LIGHTNING_PACKAGES:
        if target.startswith(prefix) and prefix != TRAINER_PACKAGE:
            return TRAINER_PACKAGE + target[len(prefix):]
    return target


def instantiate(node: Mapping[str, Any], **extra: Any) -> Any:
    """Build a `target`/`params` node, with Lightning targets mapped by `lightning_target`."""
    if "target" not in node:
        raise KeyError(f"config node has no 'target' key (keys: {sorted(node)})")
    params = {**(node.get("params") or {}), **extra}
    return get_obj_from_str(lightning_target(str(node["target"])))(**params)


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def device_kind(accelerator: Any) -> str:
    """The device a Trainer with this `accelerator` will use: `cuda`, `mps` or `cpu`."""
    name = str(accelerator or "auto").lower()
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if name in ("auto", "gpu", "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu" if name in ("auto", "cpu", "gpu") else name


def bf16_supported(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: Any, kind: str) -> Any:
    """Keep `precision` unless it asks for bfloat16 on hardware without it; then train in 32-bit and say so."""
    if precision is not None and str(precision).startswith("bf16") and not bf16_supported(kind):
        logger.warning(
            "precision %s needs bfloat16, which this %s does not support; training in 32-bit instead "
            "(set lightning.trainer.precision or --precision to choose)", precision, kind.upper()
        )
        return "32-true"
    return precision


def count_devices(devices: Any, kind: str) -> int:
    """How many devices of `kind` a Trainer `devices` value selects on this machine."""
    if devices in (None, "auto", -1, "-1"):
        return torch.cuda.device_count() if kind == "cuda" else 1
    if isinstance(devices, int):
        return devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text)


def resolve_strategy(trainer_config: dict[str, Any], strategy_cfg: Mapping[str, Any] | None, kind: str) -> Any:
    """The Trainer's `strategy`: the command line's if given; else the YAML's `lightning.strategy` when more than one
    process trains; else `auto`. Without a YAML strategy, several processes get DDP with
    `find_unused_parameters=True` (the discriminator takes no part in the autoencoder's backward pass)."""
    if "strategy" in trainer_config:
        return trainer_config.pop("strategy")
    num_nodes = int(trainer_config.get("num_nodes") or 1)
    processes = max(int(os.environ.get("WORLD_SIZE", "1")),
                    count_devices(trainer_config.get("devices"), kind) * num_nodes)
    node = dict(strategy_cfg or {"target": "lightning.pytorch.strategies.DDPStrategy",
                                 "params": {"find_unused_parameters": True}})
    if processes <= 1:
        logger.info("one training process: not using the configured strategy %s (it applies only with several "
                    "devices or processes)", node.get("target"))
        return "auto"
    target = lightning_target(str(node["target"]))
    params = dict(node.get("params") or {})
    if target.endswith("DDPStrategy"):
        params.setdefault("timeout", DDP_TIMEOUT)
    logger.info("%d training processes: strategy %s(%s)", processes, target, params)
    return get_obj_from_str(target)(**params)


# --- callbacks -------------------------------------------------------------------------------------------------------


class SkippedVideosMonitor(Callback):
    """Log `data/skipped_videos`: the bad samples (missing, unreadable or too short videos) met so far by the
    datasets that serve training and validation batches, summed over DataLoader workers and training processes.

    Skips happen inside DataLoader worker processes, whose own records never reach the main process, so each
    `VidTokDataset` item carries `num_skipped` (the bad files met while serving it). This callback adds those up per
    batch on each process and, at every training batch, all-reduces (sums) the running totals over the processes
    before logging. A file met again (by another worker, or in a later epoch by fresh workers) counts again.
    """

    def __init__(self) -> None:
        super().__init__()
        # bad samples this process's batches reported: a float tensor on the module's device, added to without
        # reading it back, since on a GPU every read of a device value waits for all the queued work
        self.local_count: torch.Tensor | None = None
        self.last_total = 0  # all processes, as last read for the warning

    def _add_batch(self, batch: Any, device: torch.device) -> torch.Tensor:
        counts = batch.get("num_skipped") if isinstance(batch, Mapping) else None
        if self.local_count is None:
            self.local_count = torch.zeros((), device=device)
        if counts is not None:
            self.local_count = self.local_count + torch.as_tensor(counts, device=device).sum()
        return self.local_count

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        # no collective here: validation batches need not line up across processes; the next training batch syncs
        self._add_batch(batch, pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # on the module's device: NCCL reduces only CUDA tensors
        total = trainer.strategy.reduce(self._add_batch(batch, pl_module.device).clone(), reduce_op="sum")
        pl_module.log("data/skipped_videos", total, on_step=True, on_epoch=False, logger=True)
        # the warning needs the value on the host: read it only as often as metrics are logged
        if (batch_idx + 1) % max(trainer.log_every_n_steps, 1) == 0 and int(total) != self.last_total:
            self.last_total = int(total)
            if trainer.is_global_zero:
                logger.warning("%d bad video sample(s) skipped so far (unreadable, missing or too short)",
                               self.last_total)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = getattr(trainer.datamodule, "skipped_summary", None)
        if callable(summary):
            for split, files in summary().items():
                for path, why in files.items():
                    logger.info("data.%s skipped %s (%s)", split, path, why)


class ValidatedModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose step-triggered checkpoints are ranked by the validation of their own step.

    Lightning calls `on_train_batch_end`, where `every_n_train_steps` saves, before the validation that ends the
    same batch, so the stock callback ranks the weights (and prints "reached ...") by the previous validation's
    value. With a monitored metric this one holds such a save until the next validation has finished and saves
    then, top-k and `last` together, with the value just computed for those weights. A held save that no
    validation follows (training stopped first) is written as `last` only, unranked.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._save_after_validation = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if self.monitor is None or not due:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif not self._should_skip_saving_checkpoint(trainer):
            self._save_after_validation = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._save_after_validation or self._should_skip_saving_checkpoint(trainer):
            super().on_validation_end(trainer, pl_module)
            return
        self._save_after_validation = False
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._save_after_validation:
            self._save_after_validation = False
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


@rank_zero_only
def save_configs(cfgdir: Path, now: str, config: DictConfig, lightning_config: DictConfig) -> None:
    """Create the run's folders; write the merged config (`-project.yaml`) and its `lightning:` section
    (`-lightning.yaml`)."""
    cfgdir.mkdir(parents=True, exist_ok=True)
    (cfgdir.parent / "checkpoints").mkdir(exist_ok=True)
    OmegaConf.save(config, cfgdir / f"{now}-project.yaml")
    OmegaConf.save(OmegaConf.create({"lightning": lightning_config}), cfgdir / f"{now}-lightning.yaml")
    logger.info("saved the run's config to %s", cfgdir)


# --- train ------------------------------------------------------------------------------------------------------------


def check_clip_sizes(model: pl.LightningModule, data_config: DictConfig) -> None:
    """Check every dataset's `video_params` (`sample_num_frames`, `input_height`, `input_width`) against the
    model's frame rules at start-up, so a clip length the model cannot take stops the run before the first step.

    Raises:
        ConfigError: naming the config key to change.
    """
    check = getattr(model, "check_clip_size", None)
    if check is None:
        return
    for split, node in (data_config.get("params") or {}).items():
        params = node.get("params") if isinstance(node, DictConfig) else None
        video_params = (params or {}).get("video_params")
        if not video_params or "sample_num_frames" not in video_params:
            continue
        height, width = (video_params.get(key) for key in ("input_height", "input_width"))
        try:
            check(int(video_params.sample_num_frames), None if height is None else int(height),
                  None if width is None else int(width))
        except ValueError as err:
            raise ConfigError(
                f"data.params.{split}.params.video_params: {err}; set sample_num_frames (and input_height, "
                "input_width) to sizes the model takes"
            ) from err


def _loss_overrides(model_config: DictConfig) -> dict[str, Any]:
    """Without a perceptual term (`perceptual_weight: 0`) LPIPS is never run, so its pretrained weights are not
    needed: build it with random ones unless the config says otherwise."""
    params = (model_config.get("params") or {}).get("loss_config", {}).get("params") or {}
    if "perceptual_weight" in params and float(params.perceptual_weight) == 0 and "lpips_pretrained" not in params:
        logger.info("perceptual_weight is 0: LPIPS is not used, so its pretrained weights are not loaded")
        return {"lpips_pretrained": False}
    return {}


@dataclass
class WandbOptions:
    project: str = "vidtok"
    entity: str | None = None
    offline: bool = False
    run_id: str | None = None


@dataclass
class TrainResult:
    trainer: pl.Trainer
    model: pl.LightningModule
    datamodule: pl.LightningDataModule
    logdir: Path


def _learning_rate(config: DictConfig, trainer_config: Mapping[str, Any], kind: str, scale_lr: bool) -> float:
    base_lr = float(config.model.base_learning_rate)
    if not scale_lr:
        logger.info("learning rate %.2e (base_learning_rate, not scaled)", base_lr)
        return base_lr
    batch_size = int(config.data.params.batch_size)
    accumulate = int(trainer_config.get("accumulate_grad_batches") or 1)
    devices = count_devices(trainer_config.get("devices"), kind) * int(trainer_config.get("num_nodes") or 1)
    lr = accumulate * devices * batch_size * base_lr
    logger.info("learning rate %.2e = %d (accumulate_grad_batches) × %d (devices) × %d (batch size) × %.2e (base)",
                lr, accumulate, devices, batch_size, base_lr)
    return lr


def _make_logger(lightning_config: DictConfig, logdir: Path, name: str, wandb: WandbOptions | None) -> Any:
    if wandb is not None:
        default = {
            "target": "lightning.pytorch.loggers.WandbLogger",
            "params": {"name": name, "save_dir": str(logdir), "offline": wandb.offline, "id": wandb.run_id or name,
                       "project": wandb.project, "log_model": False, "entity": wandb.entity},
        }
    else:
        default = {
            "target": "lightning.pytorch.loggers.TensorBoardLogger",
            "params": {"save_dir": str(logdir), "name": "tensorboard", "version": name},
        }
    return instantiate(_container(OmegaConf.merge(default, lightning_config.get("logger") or {})))


def _make_callbacks(lightning_config: DictConfig, model: pl.LightningModule, ckptdir: Path,
                    validates: bool) -> list[Callback]:
    """`ValidatedModelCheckpoint` (the 3 best by the model's `monitor`, plus `last.ckpt`), the image logger, a
    learning-rate monitor, the skipped-video count, then any other `lightning.callbacks` entries.

    A ranked checkpoint waits for the next validation; without validation there would be no checkpoint before the
    end, so then nothing is monitored and `last.ckpt` is written every `every_n_train_steps`.
    """
    checkpoint = {
        "target": "vidtok.train.ValidatedModelCheckpoint",
        "params": {"dirpath": str(ckptdir), "filename": "{epoch:04}-{step:08}", "verbose": True, "save_last": True,
                   "auto_insert_metric_name": True},
    }
    monitor = getattr(model, "monitor", None)
    if monitor and validates:
        checkpoint["params"].update(monitor=monitor, save_top_k=3)
    elif monitor:
        logger.info("no validation data: checkpoints are not ranked by %s", monitor)
    checkpoint = OmegaConf.merge(checkpoint, lightning_config.get("modelcheckpoint") or {})
    defaults = {
        "image_logger": {
            "target": "vidtok.modules.logger.ImageVideoLogger",
            "params": {"batch_frequency": 1000, "max_samples": 4, "clamp": True},
        },
        "learning_rate_logger": {
            "target": "lightning.pytorch.callbacks.LearningRateMonitor",
            "params": {"logging_interval": "step"},
        },
    }
    nodes = OmegaConf.merge(defaults, lightning_config.get("callbacks") or {})
    callbacks = [instantiate(_container(checkpoint))]
    callbacks += [instantiate(_container(node)) for node in nodes.values()]
    callbacks.append(SkippedVideosMonitor())
    return callbacks


def train(
    config: DictConfig,
    logdir: str | Path,
    *,
    ckpt_path: str | Path | None = None,
    seed: int = 23,
    scale_lr: bool = False,
    trainer_overrides: Mapping[str, Any] | None = None,
    wandb: WandbOptions | None = None,
    now: str | None = None,
    enable_tf32: bool = True,
    callbacks: Iterable[Callback] = (),
    fit: bool = True,
) -> TrainResult:
    """Train the `model` of `config` on its `data` with the `lightning` settings; returns the built objects.

    Args:
        config: merged config with `model`, `data` and optionally `lightning` sections (not modified).
        logdir: the run's folder: `checkpoints/`, `configs/`, `images/`, `tensorboard/` go in it.
        ckpt_path: a Lightning checkpoint to resume from (trainer, optimiser, EMA and loss state).
        seed: `seed_everything(seed, workers=True)`.
        scale_lr: multiply `base_learning_rate` by accumulation × devices × batch size.
        trainer_overrides: Trainer kwargs that win over `lightning.trainer` (the command line's `--key value`).
        wandb: log to Weights & Biases instead of TensorBoard.
        now: the run's timestamp, used in the saved config names.
        enable_tf32: allow TF32 matmuls and convolutions on CUDA (the original's default).
        callbacks: extra callbacks.
        fit: train; `False` only validates (the original's `-t false`).
    """
    logdir = Path(logdir)
    now = now or run_timestamp()
    config = copy.deepcopy(config)
    lightning_config = config.pop("lightning", None) or OmegaConf.create()
    trainer_config = OmegaConf.merge(lightning_config.get("trainer") or {}, dict(trainer_overrides or {}))
    lightning_config.trainer = trainer_config
    for section in ("model", "data"):
        if section not in config:
            raise KeyError(f"the config has no '{section}' section; pass the VidTok YAML with -b")

    # Lightning >= 2.5 warns at every step-based checkpoint of a manually optimised module that the weights are
    # the post-step ones; that is what VidTok saves (as the original did).
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # Training losses are logged per process, unsynchronised, as in the original (rank 0's values reach the logger);
    # Lightning suggests sync_dist=True once per key under DDP.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('train/")
    pl.seed_everything(seed, workers=True)
    if enable_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    trainer_kwargs: dict[str, Any] = _container(trainer_config)
    trainer_kwargs.setdefault("accelerator", "auto")
    kind = device_kind(trainer_kwargs["accelerator"])
    if "precision" in trainer_kwargs:
        trainer_kwargs["precision"] = resolve_precision(trainer_kwargs["precision"], kind)

    for section in ("model", "data"):
        check_config_targets(_container(config[section]), section, lightning_target)
    model = instantiate(_container(config.model))
    check_clip_sizes(model, config.data)
    # Build the loss now: a missing LPIPS weight file must stop the run before any data is read.
    if callable(getattr(model, "build_loss", None)):
        model.build_loss(**_loss_overrides(config.model))
    model.learning_rate = _learning_rate(config, trainer_kwargs, kind, scale_lr)

    validates = bool(config.data.get("params", {}).get("validation")) and trainer_kwargs.get("limit_val_batches") != 0
    strategy_cfg = _container(lightning_config.get("strategy"))
    trainer_kwargs["strategy"] = resolve_strategy(trainer_kwargs, strategy_cfg, kind)
    ckptdir, cfgdir = logdir / "checkpoints", logdir / "configs"
    trainer = pl.Trainer(
        **trainer_kwargs,
        logger=_make_logger(lightning_config, logdir, logdir.name, wandb),
        callbacks=[*_make_callbacks(lightning_config, model, ckptdir, validates), *callbacks],
        default_root_dir=str(logdir),
    )
    save_configs(cfgdir, now, config, lightning_config)  # rank 0 only

    datamodule = instantiate(_container(config.data))
    logger.info("logdir %s%s", logdir, f", resuming from {ckpt_path}" if ckpt_path else "")
    ckpt = str(ckpt_path) if ckpt_path else None
    if fit:
        trainer.fit(model, datamodule, ckpt_path=ckpt)
    else:
        trainer.validate(model, datamodule, ckpt_path=ckpt)
    leave_process_group()
    return TrainResult(trainer=trainer, model=model, datamodule=datamodule, logdir=logdir)
