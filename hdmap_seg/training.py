"""Training from a composed Hydra config (the body of ``train.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hdmap_seg.checks import instantiate_configured
from hdmap_seg.data.datamodule import SegDataModule
from hdmap_seg.io import remove_stale_temps
from hdmap_seg.module import check_resume

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[SegDataModule, L.LightningModule, L.Trainer]:
    """Instantiate data, model, module and trainer; checks the data set before anything trains."""
    # _convert_="all": plain lists and dicts, so checkpoints hold no OmegaConf objects and load with
    # weights_only=True.
    datamodule: SegDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.check()
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    # A partial, so that Hydra does not instantiate model_config (it has a _target_) on the way in.
    make_module = instantiate(cfg.module, _partial_=True, _convert_="all")
    module = make_module(
        model=instantiate(model_config), classes=datamodule.classes.to_dict(), model_config=model_config
    )
    # A group entry set to null (callbacks.progress_bar=null) switches that part off. Options these
    # objects reject are the config's mistake: one line naming the entry (hdmap_seg.checks).
    callbacks = [
        instantiate_configured(c, f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None
    ]
    loggers = [
        instantiate_configured(lg, f"logger.{name}")
        for name, lg in (cfg.get("logger") or {}).items()
        if lg is not None
    ]
    trainer: L.Trainer = instantiate_configured(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False
    )
    return datamodule, module, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from ``cfg.ckpt_path`` if set) and return the final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        # Lightning would load it inside fit, and stop on a checkpoint of another model with a traceback.
        check_resume(ckpt_path, module, module.hparams.model_config)
    # A run killed while writing left its temporary files in its run folder (learning curve) and
    # beside its checkpoints, resumed from or not (a kill inside the first save leaves none to resume).
    stale_dirs = {Path(trainer.default_root_dir)} | ({Path(ckpt_path).parent} if ckpt_path else set())
    if getattr(trainer.checkpoint_callback, "dirpath", None):
        stale_dirs.add(Path(trainer.checkpoint_callback.dirpath))
    for folder in stale_dirs:
        remove_stale_temps(folder)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if cfg.get("validate_best") and best and not trainer.fast_dev_run:
        log.info("validating the best checkpoint %s", best)
        (best_metrics,) = trainer.validate(module, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({f"best/{k}": float(v) for k, v in best_metrics.items()})
    return metrics
