"""The Trainer's run_fn: device choice -> inputs -> UNet 3+ -> fit -> export.

custom_config (pipeline/component_configs.py): "model" (ModelConfig fields), "train" (TrainConfig
fields but the step counts, which come as fn_args.train_steps / eval_steps), "image_shape"
[H, W, K], "slice" (SliceConfig fields, exported with the model for predict.py) and
"settings_yaml" (the run's settings that produced the model: a record, exported beside it as
assets.extra/settings.yaml, never read here).

Several workers (TF_CONFIG naming more than one chief/worker task, as a Kubeflow TFJob or Vertex
AI sets it): every worker runs run_fn with the same fn_args; they train together under
MultiWorkerMirroredStrategy, and only the chief's outputs land in model_run_dir and
serving_model_dir (trainer/checkpoints.py `role_directories`; docs/multi_worker.md).
Outside TFX: `python -m trainer.run fn_args.json` (the FnArgs fields as JSON).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import types
from typing import Tuple, Union

import keras
import tensorflow_transform as tft

from common import storage
from common.process_exit import exit_process
from models.losses import get_loss
from models.metrics import DiceCoefficient
from models.model_config import ModelConfig
from models.unet3plus import build_unet3plus, model_output_names
from preprocessing import features as F
from schema.contract import TRAINING_REPORT_FILE
from trainer.checkpoints import (BEST_WEIGHTS, BestWeights, RoleDirectories, WorkerBackupAndRestore,
                                 check_resume_point, resume_directory, role_directories,
                                 trainer_root)
from trainer.device import (cluster_role, enable_multi_worker_fit, resolve_device_settings,
                            synchronize_batch_norm, wait_for_workers)
from trainer.export import export_serving_model
from trainer.inputs import dali_cache_directory, first_batch, make_input_datasets
from trainer.optim import make_learning_rate, make_optimizer
from trainer.progress import TrainingProgress
from trainer.tensorboard_images import SegmentationImages
from trainer.train_config import TrainConfig


def num_classes_from_spec(transformed_feature_spec) -> int:
    """Output channels = mask channels as Transform wrote them: 1 (liver, sigmoid) or
    3 (background / liver / tumour, softmax)."""
    return int(transformed_feature_spec[F.MASK].shape[-1])


def mask_metrics(num_classes: int) -> list:
    """Metrics of the final mask output. The liver Dice is named "dice" in both modes, so the
    checkpoint monitor is the same: with a softmax output, class_id=None counts
    argmax != background, i.e. liver including tumour. Three classes add "tumor_dice"
    (argmax == 2)."""
    metrics = [DiceCoefficient(name="dice"), DiceCoefficient(per_image=True, name="slice_dice")]
    if num_classes > 1:
        metrics.append(DiceCoefficient(class_id=F.TUMOR_LABEL, name="tumor_dice"))
    return metrics


def build_and_compile(model_cfg: Union[ModelConfig, dict], train_cfg: Union[TrainConfig, dict],
                      image_shape, jit_compile: bool, total_steps: int, num_classes: int = 1):
    """UNet 3+ compiled with its losses, optimizer and metrics. The configs may be given as
    dicts (their to_dict() form; missing keys take the dataclass defaults)."""
    model_cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(
        model_cfg)
    train_cfg = train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig.from_dict(
        train_cfg)
    model = build_unet3plus(input_shape=tuple(image_shape), num_classes=num_classes,
                            filters=model_cfg.filters, skip_filters=model_cfg.skip_filters,
                            variant=model_cfg.variant, encoder=model_cfg.encoder)
    loss_kwargs = {k: float(v) for k, v in model_cfg.loss_weights.items()}

    def segmentation_loss():
        try:   # a weight the chosen loss doesn't have is an error, not silently ignored
            return get_loss(model_cfg.loss, **loss_kwargs)
        except TypeError as e:
            raise ValueError(f"loss_weights {loss_kwargs} do not fit loss {model_cfg.loss!r} "
                             f"({e})") from None

    losses, weights = {}, {}
    for name in model_output_names(model_cfg.variant):
        if name == "organ":
            losses[name], weights[name] = get_loss("bce"), model_cfg.cgm_weight
        else:
            losses[name] = segmentation_loss()
            weights[name] = 1.0 if name == "mask" else model_cfg.deep_supervision_weight
    learning_rate = make_learning_rate(train_cfg.lr_schedule, train_cfg.learning_rate,
                                       total_steps, train_cfg.warmup_steps)
    optimizer = make_optimizer(train_cfg.optimizer, learning_rate, train_cfg.weight_decay)
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                  metrics={"mask": mask_metrics(num_classes)},
                  jit_compile=jit_compile)
    return model


def _write_training_report(model_run_dir: str, device, epochs_run: int, seconds: float,
                           images_per_s: float, val_dice) -> None:
    """What the run summary prints about training: the device choice with its reason and the
    probe's bf16/fp32 ratio, and the speed reached."""
    report = {"device": device.to_dict(), "epochs_run": epochs_run, "seconds": seconds,
              "images_per_s": images_per_s, "val_dice": [float(v) for v in val_dice]}
    storage.write_text(storage.join(model_run_dir, TRAINING_REPORT_FILE),
                       json.dumps(report, indent=1))


def _callbacks(fn_args, dirs: RoleDirectories, chief: bool, eval_ds, monitor: str,
               epochs: int, steps_per_epoch: int, train_cfg: TrainConfig
               ) -> Tuple[list, BestWeights]:
    resume_dir = resume_directory(fn_args)
    restore = check_resume_point(resume_dir, epochs, chief)
    # The exported model is the one with the best validation Dice, not the last one; the
    # chief keeps the best so far beside the resume checkpoint, so it survives a kill too.
    best = BestWeights(dirs.best_dir, monitor)
    callbacks = [
        # Saves weights, optimizer state and epoch after every epoch (the chief); restores them
        # on start (every worker); deletes them when training completes (the chief).
        WorkerBackupAndRestore(resume_dir, chief, restore),
        keras.callbacks.TensorBoard(log_dir=dirs.model_run_dir, update_freq="epoch"),
        SegmentationImages(dirs.model_run_dir, *first_batch(eval_ds)),
        best,
        # Step, images/s, ETA, loss and val Dice: a bar in a terminal, a line every 30 s in a pipe.
        TrainingProgress(epochs, steps_per_epoch, train_cfg.batch_size, monitor,
                         validation_steps=int(fn_args.eval_steps)),
    ]
    if train_cfg.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=train_cfg.early_stopping_patience))
    return callbacks, best


def _report_training(model_run_dir: str, history, monitor: str, device, seconds: float,
                     epochs: int, images_per_epoch: int) -> None:
    val_dice = history.history.get(monitor, [float("nan")])
    epochs_run = len(history.epoch)
    images_per_s = epochs_run * images_per_epoch / max(seconds, 1e-9)
    logging.info("Ran %d of %d epochs in %.0f s (%.1f images/s incl. validation); validation "
                 "Dice per epoch: %s", epochs_run, epochs, seconds, images_per_s,
                 [round(v, 4) for v in val_dice])
    _write_training_report(model_run_dir, device, epochs_run, seconds, images_per_s, val_dice)
    tumor_monitor = monitor.replace("dice", "tumor_dice")
    if tumor_monitor in history.history:
        logging.info("Validation tumour Dice per epoch: %s",
                     [round(v, 4) for v in history.history[tumor_monitor]])


def run_fn(fn_args) -> None:
    cfg = fn_args.custom_config
    model_cfg = ModelConfig.from_dict(cfg["model"])
    train_cfg = TrainConfig.from_dict(cfg["train"])
    role = cluster_role()
    device = resolve_device_settings(train_cfg.precision, train_cfg.xla, train_cfg.gpus,
                                     train_cfg.cpu_replicas, filters=model_cfg.filters,
                                     skip_filters=model_cfg.skip_filters,
                                     probe_cache_dir=trainer_root(fn_args.model_run_dir),
                                     role=role)
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy must set up the runtime.
    # One instance: the DALI datasets are distributed by it.
    strategy = device.strategy()
    device.apply()
    keras.utils.set_random_seed(train_cfg.seed)   # initial weights (Python, NumPy and TF)
    dirs = role_directories(fn_args, role.is_chief, role.name)
    try:
        _train_and_export(fn_args, cfg, model_cfg, train_cfg, device, strategy, dirs)
        # No worker leaves (and has its TFX executor look for the model) before the chief's
        # export is complete.
        wait_for_workers(strategy)
    finally:
        dirs.cleanup()


def _train_and_export(fn_args, cfg: dict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                      device, strategy, dirs: RoleDirectories) -> None:
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    spec = tf_transform_output.transformed_feature_spec()
    num_classes = num_classes_from_spec(spec)
    total_steps = int(fn_args.train_steps)
    steps_per_epoch = min(train_cfg.steps_per_epoch, total_steps)
    epochs = max(1, math.ceil(total_steps / steps_per_epoch))
    with strategy.scope():
        model = build_and_compile(model_cfg, train_cfg, cfg["image_shape"], device.jit_compile,
                                  epochs * steps_per_epoch, num_classes)
        if device.replicas > 1:
            synchronize_batch_norm(model)
    enable_multi_worker_fit(model, strategy)
    logging.info("UNet 3+ %s: %s parameters, %d output channel(s), filters %s, skip %s, "
                 "loss %s, %s with %s lr, policy %s, XLA %s", model_cfg.variant,
                 f"{model.count_params():,}", num_classes, model_cfg.filters,
                 model_cfg.skip_filters, model_cfg.loss, train_cfg.optimizer,
                 train_cfg.lr_schedule, device.policy, device.jit_compile)

    outputs = model_output_names(model_cfg.variant)
    train_ds, eval_ds, _ = make_input_datasets(
        fn_args.train_files, fn_args.eval_files, spec, outputs, train_cfg, strategy=strategy,
        cache_dir=dali_cache_directory(fn_args.model_run_dir), seed=train_cfg.seed)
    # Keras names a metric after its output only when the model has several outputs.
    monitor = "val_dice" if len(outputs) == 1 else "val_mask_dice"
    callbacks, best = _callbacks(fn_args, dirs, device.role.is_chief, eval_ds, monitor, epochs,
                                 steps_per_epoch, train_cfg)
    logging.info("Training %d steps (%d epochs x %d), batch %d, validating on %d batches",
                 epochs * steps_per_epoch, epochs, steps_per_epoch, train_cfg.batch_size,
                 fn_args.eval_steps)
    start = time.time()
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=eval_ds, validation_steps=int(fn_args.eval_steps),
                        callbacks=callbacks, verbose=0)   # TrainingProgress reports
    _report_training(dirs.model_run_dir, history, monitor, device, time.time() - start, epochs,
                     steps_per_epoch * train_cfg.batch_size)
    if best.restore_best(keep_copy_at=storage.join(dirs.model_run_dir, BEST_WEIGHTS)):
        logging.info("Exporting the best epoch, %d (validation Dice %.4f)",
                     best.best_epoch + 1, best.best)
    # Every worker exports (saving may run collective ops); only the chief's copy is kept.
    export_serving_model(model, tf_transform_output, dirs.serving_model_dir, cfg["slice"],
                         cfg.get("settings_yaml"))
    logging.info("Exported to %s", dirs.serving_model_dir)


def main(argv=None) -> int:
    """`python -m trainer.run FN_ARGS_JSON`: run_fn outside TFX, e.g. as the command of each
    replica of a Kubeflow TFJob. FN_ARGS_JSON (a path or URI) holds the FnArgs fields run_fn
    reads: custom_config, transform_output, train_files, eval_files, train_steps, eval_steps,
    model_run_dir, serving_model_dir."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_fn(types.SimpleNamespace(**json.loads(storage.read_text(argv[0]))))
    return 0


if __name__ == "__main__":
    exit_process(main())
