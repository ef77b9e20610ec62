"""The multi-replica path without GPUs: the CPU split into 2 logical devices under
MirroredStrategy trains the same as 1 replica on the same global batch (BatchNorm synchronized),
step by step: the loss of each of 3 SGD steps and the weights after them. Each setting runs in a
fresh process, since devices can only be split before TF initializes.

The comparison is tight enough to catch the classic multi-replica bug, gradients averaged twice
(each replica's update halved): the 2-replica process also trains a deliberately broken run
(`halve`: the learning rate halved, which for plain SGD is exactly a gradient divided by the
replica count once too often), and the comparison must reject it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from replica_helpers import STEPS, WEIGHT_TOL, matches, read_training_result, weight_mismatch

SCRIPT = r"""
import json, sys
import numpy as np, keras, tensorflow as tf
from models.losses import get_loss
from models.unet3plus import build_unet3plus
from trainer.device import resolve_device_settings, synchronize_batch_norm

replicas, out, variants = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
device = resolve_device_settings("fp32", "off", cpu_replicas=replicas)
device.apply()
rng = np.random.default_rng(0)
x = rng.random((4, 32, 32, 3)).astype("float32")
y = (x[..., :1] > 0.5).astype("float32")
result = {"replicas": device.replicas}
keras.utils.set_random_seed(0)
with device.strategy().scope():
    model = build_unet3plus((32, 32, 3), filters=(4, 8, 16, 32, 64), skip_filters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss={"mask": get_loss("bce_dice")})
start = model.get_weights()
# One model per process, each variant trained from the same start: reusing the traced train
# step keeps the extra variants cheap (tracing the model is most of a run's time).
for variant in variants:
    model.set_weights(start)     # weights and BatchNorm statistics; plain SGD has no slots
    # "halve": the deliberately broken run, its update halved as if the gradient were averaged
    # over the replicas twice (for SGD without momentum a halved learning rate is the same).
    model.optimizer.learning_rate.assign(0.05 / 2 if variant == "halve" else 0.05)
    # "sync": one replica with synchronized BatchNorm too (an all-reduce over one replica),
    # so that it computes the moments with the same arithmetic as the 2-replica run.
    if (device.replicas > 1 or variant == "sync") and not model.get_layer("enc1_1_bn").synchronized:
        synchronize_batch_norm(model)
        model.make_train_function(force=True)
    initial = [np.asarray(w) for w in model.trainable_weights]
    # One step per epoch, so history holds each step's loss (not a running mean in an epoch);
    # each step's loss is computed before its update, so steps 2 and 3 see the earlier updates.
    data = tf.data.Dataset.from_tensor_slices((x, {"mask": y})).batch(4).repeat(%d)
    history = model.fit(data, epochs=%d, steps_per_epoch=1, verbose=0)
    # The trainable weights before and after: the BatchNorm statistics move by their momentum
    # whatever the learning rate, so they would hide a wrong update size.
    np.savez(f"{out}/{variant}.npz", *initial, *[np.asarray(w) for w in model.trainable_weights])
    result[variant] = [float(v) for v in history.history["loss"]]
print("RESULT " + json.dumps(result))
""" % (STEPS, STEPS)


def _train(replicas: int, out_dir, variants=("ok",)) -> dict:
    """{"replicas": n, variant: {"loss": per-step losses, "initial"/"final": weight arrays}}."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(replicas), str(out_dir),
                          ",".join(variants)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return read_training_result(out.stdout, out_dir, variants)


# Per-step losses: ~1e-7 apart, the halved run ~1e-2 from step 2 on (measured on 3 steps).
LOSS_RTOL = 1e-5


@pytest.mark.slow   # two training processes
def test_two_cpu_replicas_match_one_and_halved_updates_are_caught(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _train(1, tmp_path / "one", variants=("ok", "sync"))
    two = _train(2, tmp_path / "two", variants=("ok", "halve"))
    assert one["replicas"] == 1 and two["replicas"] == 2
    # The training as it runs in production on 1 and on 2 replicas: the same loss at each step
    # (step 1 before any update, steps 2 and 3 after one and two updates). Unsynchronized
    # BatchNorm on 1 replica takes the moments from tf.nn.moments, synchronized ones from
    # all-reduced sums (variance E[x^2] - E[x]^2); in float32 that changes the first encoder
    # stage's updates by up to ~15% after 3 steps, which shows in the weights (so those are
    # compared against "sync" below) but hardly in the loss (~7e-5 at step 3).
    np.testing.assert_allclose(two["ok"]["loss"], one["ok"]["loss"], rtol=5e-4)
    # The multi-replica path itself (batch split, gradient all-reduce, loss scaling) against
    # one replica doing the same arithmetic: per-step losses and weights after 3 steps.
    reference, good, halved = one["sync"], two["ok"], two["halve"]
    np.testing.assert_allclose(good["loss"], reference["loss"], rtol=LOSS_RTOL)
    assert weight_mismatch(reference, good) < WEIGHT_TOL, weight_mismatch(reference, good)
    assert matches(reference, good, LOSS_RTOL)
    # The deliberately broken run (updates halved): same first loss (nothing updated yet),
    # then the comparison must reject it, on the losses and on the weights each.
    np.testing.assert_allclose(halved["loss"][0], reference["loss"][0], rtol=LOSS_RTOL)
    assert not np.allclose(halved["loss"], reference["loss"], rtol=LOSS_RTOL, atol=0)
    assert weight_mismatch(reference, halved) > 4 * WEIGHT_TOL, weight_mismatch(reference, halved)
    assert not matches(reference, halved, LOSS_RTOL)
