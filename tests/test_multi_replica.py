"""The multi-replica path without GPUs: the CPU split into 2 logical devices under
MirroredStrategy trains the same as 1 replica on the same global batch (BatchNorm synchronized).
Each setting runs in a fresh process, since devices can only be split before TF initializes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json, sys
import numpy as np, keras, tensorflow as tf
from models.losses import get_loss
from models.unet3plus import build_unet3plus
from trainer.device import resolve_device_settings, synchronize_batch_norm

device = resolve_device_settings("fp32", "off", cpu_replicas=int(sys.argv[1]))
device.apply()
rng = np.random.default_rng(0)
x = rng.random((4, 32, 32, 3)).astype("float32")
y = (x[..., :1] > 0.5).astype("float32")
keras.utils.set_random_seed(0)
with device.strategy().scope():
    model = build_unet3plus((32, 32, 3), filters=(4, 8, 16, 32, 64), skip_filters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss={"mask": get_loss("bce_dice")})
    if device.replicas > 1:
        synchronize_batch_norm(model)
data = tf.data.Dataset.from_tensor_slices((x, {"mask": y})).batch(4).repeat(3)
history = model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)
print("RESULT " + json.dumps({"replicas": device.replicas,
                              "loss": [float(v) for v in history.history["loss"]],
                              "kernel": np.asarray(model.get_layer("enc1_1_conv").kernel).ravel().tolist()}))
"""


def _train(replicas: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(replicas)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_two_cpu_replicas_match_one():
    one, two = _train(1), _train(2)
    assert one["replicas"] == 1 and two["replicas"] == 2
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    # After three SGD steps the weights agree to ~0.1%: synchronized BatchNorm all-reduces the
    # moments in the forward pass, but its gradient is not exactly the single-replica one.
    # (The second and third losses above already depend on the first updates.)
    kernel_one, kernel_two = np.array(one["kernel"]), np.array(two["kernel"])
    np.testing.assert_allclose(kernel_two, kernel_one, atol=1e-2 * np.abs(kernel_one).max())
