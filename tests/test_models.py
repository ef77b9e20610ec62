"""Tests for models/: UNet 3+ structure, variants, losses, metrics, training and saving.

Tiny shapes throughout (32x32 / 64x64, filters (4, 8, 16, 32, 64), skip_filters 4); only the
parameter-count test builds the paper-size model, without running it.  The keras.applications
encoders (fixed widths, 16-27 M parameters) are each built once, at 64x64x5 (one also at 32x32x3).
"""
import numpy as np
import pytest

import keras
from keras import ops

from models import losses as L
from models.encoders import build_encoder
from models.model_config import ENCODERS, LOSS_PARAMETERS, LOSSES, VARIANTS
from models.metrics import DiceCoefficient, IoUScore, dice_numpy
from models.unet3plus import build_unet3plus, model_output_names
from metric_helpers import (MeanSliceDice, MeanSliceIoU, iou_numpy, mean_slice_dice_numpy,
                            mean_slice_iou_numpy, overlap_metrics)

TINY = dict(filters=(4, 8, 16, 32, 64), skip_filters=4)


def tiny(variant="base", num_classes=1, size=32, channels=1, **kw):
    return build_unet3plus((size, size, channels), num_classes=num_classes, variant=variant,
                           **{**TINY, **kw})


def blob_masks(batch=2, size=64, seed=0):
    """Binary masks with a random rectangle each (some foreground, some background)."""
    rng = np.random.default_rng(seed)
    m = np.zeros((batch, size, size, 1), np.float32)
    for b in range(batch):
        y0, x0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        m[b, y0:y0 + h, x0:x0 + w] = 1.0
    return m


@pytest.fixture(params=["float32", "mixed_bfloat16"])
def policy(request):
    keras.mixed_precision.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


# ------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------

def test_param_count_matches_paper():
    model = build_unet3plus((320, 320, 3), num_classes=1)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    assert abs(trainable - 26.97e6) / 26.97e6 < 1e-3, trainable
    assert abs(total - 26.97e6) / 26.97e6 < 1e-3, total
    assert trainable == 26_971_777 and total == 26_984_833
    # decoder stages: five 64-channel skip convs and a 320->320 fuse conv each
    for i in range(1, 5):
        assert model.get_layer(f"dec{i}_fuse_conv").kernel.shape == (3, 3, 320, 320)
        assert model.get_layer(f"dec{i}_cat").output.shape[-1] == 320


def test_output_names():
    assert model_output_names("base") == ["mask"]
    assert model_output_names("ds") == ["mask", "mask_ds2", "mask_ds3", "mask_ds4", "mask_ds5"]
    assert model_output_names("ds_cgm")[-1] == "organ"
    with pytest.raises(ValueError):
        model_output_names("nope")
    with pytest.raises(ValueError):
        build_unet3plus((30, 30, 1), variant="base", **TINY)


def test_full_scale_skip_wiring():
    """Each decoder stage concatenates exactly the five scale-matched inputs of paper Eq. 1."""
    model = tiny("base", size=32)
    for i in range(1, 5):
        cat = model.get_layer(f"dec{i}_cat")
        srcs = sorted(n.operation.name for t in cat.input for n in [t._keras_history])
        expected = sorted([f"dec{i}_en{k}_relu" for k in range(1, i + 1)]
                          + [f"dec{i}_de{k}_relu" for k in range(i + 1, 5)] + [f"dec{i}_en5_relu"])
        assert srcs == expected
        side = 32 // 2 ** (i - 1)
        assert tuple(cat.output.shape[1:]) == (side, side, 5 * 4)
    # resampling factors: finer encoder maps pooled, coarser maps upsampled
    assert model.get_layer("dec4_en1_pool8").pool_size == (8, 8)
    assert model.get_layer("dec1_en5_up16").size == (16, 16)
    assert model.get_layer("dec2_de3_up2").size == (2, 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_forward(variant, policy):
    for num_classes in (1, 3):
        model = tiny(variant, num_classes=num_classes, size=32)
        x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
        out = model(x, training=False)
        assert list(out) == model_output_names(variant)
        for key, val in out.items():
            v = _np(val)
            assert keras.backend.standardize_dtype(val.dtype) == "float32", (key, val.dtype)
            want = (2, 1) if key == "organ" else (2, 32, 32, num_classes)
            assert v.shape == want, (key, v.shape)
            assert np.all(np.isfinite(v)) and v.min() >= 0.0 and v.max() <= 1.0
            if key != "organ" and num_classes > 1:
                np.testing.assert_allclose(v.sum(-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_cgm_forced_empty_gives_background(num_classes):
    model = tiny("ds_cgm", num_classes=num_classes, size=32)
    conv = model.get_layer("cgm_conv")
    conv.bias.assign(np.full(conv.bias.shape, -1e4, np.float32))
    x = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    out = model.predict(x, verbose=0)
    assert np.all(out["organ"] < 0.5)
    for key in model_output_names("ds_cgm")[:-1]:
        m = out[key]
        if num_classes == 1:
            assert np.all(m == 0.0), key
        else:
            assert np.all(m[..., 0] == 1.0) and np.all(m[..., 1:] == 0.0), key
    # forced "present": the gate is the identity
    conv.bias.assign(np.full(conv.bias.shape, 1e4, np.float32))
    out = model.predict(x, verbose=0)
    assert np.all(out["organ"] > 0.5)
    assert out["mask"].max() > 0.0


# ------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------

# encoder -> (layer names of the 5 maps, their channels, trainable params of ds_cgm at 64x64x5
# with skip_filters 4)
APP_ENCODERS = {
    "vgg16": (("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
              (64, 128, 256, 512, 512), 14_874_518),
    "vgg19": (("block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"),
              (64, 128, 256, 512, 512), 20_184_214),
    "resnet50": (("enc1_2_relu", "conv1_relu", "conv2_block3_out", "conv3_block4_out",
                  "conv4_block6_out"), (64, 64, 256, 512, 1024), 8_835_606),
}


def test_encoder_names_and_default():
    assert ENCODERS == ("unet3plus", "vgg16", "vgg19", "resnet50")
    with pytest.raises(ValueError):
        build_unet3plus((32, 32, 1), encoder="nope", **TINY)
    # the default encoder is the paper's: same layers as before the encoder option existed
    inp = keras.Input((32, 32, 1))
    feats = build_encoder("unet3plus", inp, TINY["filters"])
    assert [tuple(f.shape[1:]) for f in feats] == [(32 // 2 ** i, 32 // 2 ** i, c)
                                                  for i, c in enumerate(TINY["filters"])]
    model = tiny("base", size=32, encoder="unet3plus")
    assert model.name == "unet3plus_base"
    assert model.get_layer("enc5_2_relu").output.shape[-1] == 64


@pytest.mark.parametrize("encoder", list(APP_ENCODERS))
def test_application_encoder(encoder):
    """64x64x5 input (2.5D), ds_cgm: right output shapes, feature maps at scales 1..1/16 with the
    encoder's widths, flattened into the model, filters ignored, nothing beyond 1/16 built."""
    names, channels, n_trainable = APP_ENCODERS[encoder]
    model = build_unet3plus((64, 64, 5), variant="ds_cgm", encoder=encoder, **TINY)
    assert model.name == f"unet3plus_{encoder}_ds_cgm"
    for i, (name, ch) in enumerate(zip(names, channels)):
        side = 64 // 2 ** i
        assert tuple(model.get_layer(name).output.shape[1:]) == (side, side, ch), name
    # decoder skip convs adapt to the encoder's channels; the fuse width is unchanged
    assert model.get_layer("dec4_en4_conv").kernel.shape == (3, 3, channels[3], 4)
    assert model.get_layer("dec1_en5_conv").kernel.shape == (3, 3, channels[4], 4)
    assert model.get_layer("dec1_cat").output.shape[-1] == 20
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == n_trainable
    first = model.get_layer("enc1_1_conv" if encoder == "resnet50" else "block1_conv1")
    assert first.kernel.shape[2] == 5
    layer_names = {layer.name for layer in model.layers}
    assert not any(n.startswith(("conv5_", "block5_pool")) for n in layer_names)
    if encoder == "resnet50":
        assert model.get_layer("conv1_conv").kernel.shape == (7, 7, 5, 64)
        bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
        assert bns and all(la.momentum == pytest.approx(0.9) for la in bns)
    x = np.random.default_rng(7).random((2, 64, 64, 5), dtype=np.float32)
    out = model(x, training=False)
    assert list(out) == model_output_names("ds_cgm")
    for key, val in out.items():
        v = _np(val)
        assert v.shape == ((2, 1) if key == "organ" else (2, 64, 64, 1)), (key, v.shape)
        assert np.all(np.isfinite(v)) and v.min() >= 0.0 and v.max() <= 1.0


def test_application_encoder_rgb_base():
    model = build_unet3plus((32, 32, 3), variant="base", encoder="vgg16", skip_filters=4)
    assert model.get_layer("block1_conv1").kernel.shape == (3, 3, 3, 64)
    out = model(np.ones((1, 32, 32, 3), np.float32), training=False)
    assert list(out) == ["mask"] and tuple(out["mask"].shape) == (1, 32, 32, 1)
    with pytest.raises(ValueError):
        build_unet3plus((40, 40, 3), encoder="vgg16")  # not divisible by 16


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------

LOSS_FNS = {"focal": L.focal_loss, "iou": L.iou_loss, "ms_ssim": L.ms_ssim_loss,
            "dice": L.dice_loss, "bce": L.bce_loss}


@pytest.mark.parametrize("size", [64, 32])
def test_losses_perfect_and_inverted(size):
    y = blob_masks(2, size)
    for name, fn in LOSS_FNS.items():
        perfect = _np(fn(y, y))
        assert perfect.shape == (2,)
        assert np.all(np.abs(perfect) < 1e-4), (name, perfect)
        inverted = _np(fn(y, 1.0 - y))
        assert np.all(inverted > 0.1), (name, inverted)
    hybrid = L.HybridLoss()
    assert abs(float(hybrid(y, y))) < 1e-4
    assert float(hybrid(y, 1.0 - y)) > 1.0
    for name in ("hybrid", "dice", "bce", "focal", "iou", "bce_dice"):
        loss = L.get_loss(name)
        assert abs(float(loss(y, y))) < 1e-4, name
        assert float(loss(y, 1.0 - y)) > 0.1, name


def test_ms_ssim_identical_is_one():
    x = np.random.default_rng(2).random((2, 64, 64, 2), dtype=np.float32)
    np.testing.assert_allclose(_np(L.ms_ssim(x, x)), 1.0, atol=1e-5)
    np.testing.assert_allclose(_np(L.ms_ssim_loss(x, x)), 0.0, atol=1e-5)
    assert L.ms_ssim_plan(64, 64) == ((11, 11, 11, 7, 3), L.MS_SSIM_WEIGHTS)
    wins, weights = L.ms_ssim_plan(16, 16)
    assert len(wins) == 3 and abs(sum(weights) - 1.0) < 1e-9


@pytest.mark.parametrize("channels", [1, 3])
def test_ms_ssim_matches_tf(channels):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    size = 180
    a = rng.random((2, size, size, channels)).astype(np.float32)
    b = np.clip(0.7 * a + 0.3 * rng.random(a.shape), 0, 1).astype(np.float32)
    ref = tf.image.ssim_multiscale(tf.constant(a), tf.constant(b), max_val=1.0).numpy()
    ours = 1.0 - _np(L.ms_ssim_loss(a, b))
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    # odd side (exercises the symmetric padding before pooling)
    a, b = a[:, :177, :177], b[:, :177, :177]
    ref = tf.image.ssim_multiscale(tf.constant(a), tf.constant(b), max_val=1.0).numpy()
    np.testing.assert_allclose(1.0 - _np(L.ms_ssim_loss(a, b)), ref, atol=2e-3)


def test_softmax_losses_skip_background():
    fg = blob_masks(2, 32)
    y = np.concatenate([1.0 - fg, fg, np.zeros_like(fg)], -1)
    p = y.copy()
    p[..., 0] = 0.3  # background channel garbage: must not matter
    for name in ("hybrid", "dice", "bce", "focal", "iou", "bce_dice"):
        assert abs(float(L.get_loss(name)(y, p))) < 1e-4, name
        assert float(L.get_loss(name, skip_background=False)(y, p)) > 1e-3, name


def test_overlap_losses_weigh_each_class_alike():
    """A missed small tumour costs as much as a missed liver: Dice and IoU are taken per channel
    and averaged, not over the channels' sum, where the large liver would hide the tumour."""
    liver = blob_masks(1, 64)
    tumour = np.zeros_like(liver)
    tumour[:, 30:33, 30:33] = 1.0          # 9 pixels beside a liver of hundreds
    liver = liver * (1.0 - tumour)
    y = np.concatenate([1.0 - liver - tumour, liver, tumour], -1)
    p = np.concatenate([1.0 - liver, liver, np.zeros_like(tumour)], -1)   # tumour missed
    for name in ("dice", "iou"):
        value = float(L.get_loss(name, smooth=1e-3)(y, p))
        assert value == pytest.approx(0.5, abs=0.01), (name, value)


def test_batch_overlap_judges_the_batch_not_each_slice():
    """With batch_overlap a tumour-free slice adds no Dice term of its own: a batch of one slice
    with its tumour found and one empty slice scores ~0 over the batch, while per image the
    empty slice's tiny false positive counts as a whole miss."""
    tumour = np.zeros((2, 32, 32, 1), np.float32)
    tumour[0, 10:16, 10:16] = 1.0
    pred = tumour.copy()
    pred[1, 0, 0] = 0.5                       # a speck on the tumour-free slice
    per_image = _np(L.dice_loss(tumour, pred, smooth=1e-3))
    over_batch = _np(L.dice_loss(tumour, pred, smooth=1e-3, over_batch=True))
    assert per_image[1] > 0.9 and per_image[0] < 0.01
    np.testing.assert_allclose(over_batch, over_batch[0])          # one value, repeated
    assert over_batch[0] < 0.01
    for name in ("dice", "iou", "bce_dice", "hybrid"):
        loss = L.get_loss(name, batch_overlap=1.0)
        assert loss.batch_overlap is True
        back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert back.batch_overlap is True, name
        assert float(loss(tumour, pred)) < float(L.get_loss(name)(tumour, pred)), name


def test_loss_serialization():
    loss = L.HybridLoss(w_focal=2.0, w_ms_ssim=0.5, w_iou=1.5)
    cfg = keras.saving.serialize_keras_object(loss)
    back = keras.saving.deserialize_keras_object(cfg)
    assert isinstance(back, L.HybridLoss)
    assert (back.w_focal, back.w_ms_ssim, back.w_iou) == (2.0, 0.5, 1.5)
    with pytest.raises(ValueError):
        L.get_loss("nope")


def test_loss_names_and_parameters_are_the_classes_own():
    """models/model_config.py lists the losses and their parameters for the settings checks
    (no Keras there); they must be what get_loss builds."""
    assert tuple(L._LOSSES) == LOSSES
    for name in LOSSES:
        loss = L.get_loss(name)
        assert tuple(type(loss).config_fields) == LOSS_PARAMETERS[name], name
        for param in LOSS_PARAMETERS[name]:
            L.get_loss(name, **{param: 1.0})   # each one is accepted


def test_organ_present():
    y = blob_masks(2, 32)
    y[1] = 0
    np.testing.assert_array_equal(_np(L.organ_present(y)), [[1.0], [0.0]])


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------

def test_metrics_pooled_and_numpy():
    rng = np.random.default_rng(4)
    t1, t2 = blob_masks(2, 32, seed=5), blob_masks(2, 32, seed=6)
    p1 = rng.random(t1.shape).astype(np.float32)
    p2 = np.clip(t2 * 0.8 + 0.3 * rng.random(t2.shape), 0, 1).astype(np.float32)
    dice, iou = DiceCoefficient(), IoUScore()
    for t, p in ((t1, p1), (t2, p2)):
        dice.update_state(t, p)
        iou.update_state(t, p)
    pred = np.concatenate([p1, p2]) >= 0.5
    true = np.concatenate([t1, t2]) >= 0.5
    assert abs(float(dice.result()) - dice_numpy(pred, true)) < 1e-6
    assert abs(float(iou.result()) - iou_numpy(pred, true)) < 1e-6
    dice.reset_state()
    dice.update_state(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))
    assert float(dice.result()) == 1.0
    assert dice_numpy(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert iou_numpy(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert dice_numpy([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / 3)
    assert iou_numpy([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(1 / 2)


def _slice_example():
    """Four 4x4 slices: perfect (Dice 1, IoU 1), half found (2/3, 1/2), both empty (1, 1),
    false positive on an empty slice (0, 0)."""
    true = np.zeros((4, 4, 4, 1), np.float32)
    pred = np.zeros((4, 4, 4, 1), np.float32)
    true[0, :2, :2] = 1
    pred[0, :2, :2] = 0.9
    true[1, 2:, 2:] = 1
    pred[1, 2:, 3:] = 0.8
    pred[3, 0, :3] = 0.7
    return true, pred


def test_mean_slice_metrics_hand_made():
    true, pred = _slice_example()
    sd, si = MeanSliceDice(), MeanSliceIoU()
    pd, pi = DiceCoefficient(), IoUScore()
    for m in (sd, si, pd, pi):
        m.update_state(true[:2], pred[:2])  # two batches: the mean runs over all slices seen
        m.update_state(true[2:], pred[2:])
    assert float(sd.result()) == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    assert float(si.result()) == pytest.approx((1 + 1 / 2 + 1 + 0) / 4)
    # pooled: TP 6, FP 3, FN 2
    assert float(pd.result()) == pytest.approx(12 / 17)
    assert float(pi.result()) == pytest.approx(6 / 11)
    assert mean_slice_dice_numpy(pred >= 0.5, true >= 0.5) == pytest.approx(2 / 3)
    assert mean_slice_iou_numpy(pred >= 0.5, true >= 0.5) == pytest.approx(0.625)
    assert (sd.name, si.name, pd.name) == ("slice_dice", "slice_iou", "dice")
    # per_image=True on the base class is the same metric; weights give a weighted mean
    d = DiceCoefficient(per_image=True)
    d.update_state(true, pred, sample_weight=np.array([2.0, 0.0, 1.0, 1.0]))
    assert float(d.result()) == pytest.approx((2 * 1 + 1) / 4)
    d.reset_state()
    assert float(d.result()) == 1.0
    d.update_state(true[3:], pred[3:])
    assert float(d.result()) == 0.0
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sd))
    assert isinstance(back, MeanSliceDice) and back.per_image and back.name == "slice_dice"


def test_mean_slice_metrics_per_class():
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, :2] = 1            # slice 0: class 1 only
    labels[1, 3, :2] = 2         # slice 1: class 2 only
    onehot = np.eye(3, dtype=np.float32)[labels]
    pred = onehot.copy()
    pred[0, 0, 0] = [0.1, 0.0, 0.9]  # slice 0: one class-1 pixel predicted as class 2
    got = {}
    for m in overlap_metrics(3):
        m.update_state(onehot, pred)
        got[m.name] = float(m.result())
    assert set(got) == {"dice_c1", "dice_c2", "iou_c1", "iou_c2",
                        "slice_dice_c1", "slice_dice_c2", "slice_iou_c1", "slice_iou_c2"}
    assert got["dice_c1"] == pytest.approx(14 / 15)
    assert got["slice_dice_c1"] == pytest.approx((14 / 15 + 1.0) / 2)  # slice 1: both empty
    assert got["dice_c2"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert got["slice_dice_c2"] == pytest.approx((0.0 + 1.0) / 2)  # slice 0: FP only
    assert got["slice_iou_c2"] == pytest.approx(0.5)
    assert [m.name for m in overlap_metrics(1)] == ["dice", "iou", "slice_dice", "slice_iou"]


def test_metrics_multiclass():
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, :2] = 1
    labels[0, 3, :2] = 2
    onehot = np.eye(3, dtype=np.float32)[labels]
    pred = onehot.copy()
    pred[0, 0, 0] = [0.1, 0.0, 0.9]  # a class-1 pixel predicted as class 2
    d1 = DiceCoefficient(class_id=1)
    d1.update_state(onehot, pred)
    assert float(d1.result()) == pytest.approx(2 * 7 / (2 * 7 + 1))
    d_fg = DiceCoefficient()  # any foreground
    d_fg.update_state(labels[..., None], pred)
    assert float(d_fg.result()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------
# Training, gradients, saving
# ------------------------------------------------------------------------------------------

def _targets(model, y):
    targets = {k: y for k in model.output_names if k != "organ"}
    if "organ" in model.output_names:
        targets["organ"] = _np(L.organ_present(y))
    return targets


def _compile(model, loss="hybrid", lr=0.05):
    # SGD, not Adam: tracing Adam's per-variable update graph costs ~15 s on a 2-core CPU.
    losses = {k: (keras.losses.BinaryCrossentropy() if k == "organ" else L.get_loss(loss))
              for k in model.output_names}
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss=losses, jit_compile=False,
                  metrics={"mask": [DiceCoefficient(), IoUScore(), MeanSliceDice()]})


HEADS = [f"head{k}_conv" for k in range(1, 6)] + ["cgm_conv"]


@pytest.fixture(scope="module")
def fitted_cgm():
    """A tiny ds_cgm model before/after one compiled fit step (shared: tracing is the slow part)."""
    keras.utils.set_random_seed(0)
    model = tiny("ds_cgm", size=32)
    model.get_layer("cgm_conv").bias.assign(np.full((1,), 5.0, np.float32))  # gate open
    before = {h: _np(model.get_layer(h).kernel).copy() for h in HEADS}
    _compile(model)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    y = blob_masks(2, 32)
    y[1] = 0
    hist = model.fit(x, _targets(model, y), batch_size=2, epochs=1, verbose=0)
    return model, before, hist, x


def test_fit_step_updates_every_head(fitted_cgm):
    model, before, hist, _ = fitted_cgm
    assert np.isfinite(hist.history["loss"][0])
    assert {"mask_dice", "mask_iou", "mask_slice_dice", "organ_loss",
            "mask_ds5_loss"} <= set(hist.history)
    for h in HEADS:
        assert not np.allclose(_np(model.get_layer(h).kernel), before[h]), h


def test_gradients_tf_and_cgm_stop_gradient():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("GradientTape check needs the TensorFlow backend")
    keras.utils.set_random_seed(1)
    model = tiny("ds_cgm", size=32)
    model.get_layer("cgm_conv").bias.assign(np.full((1,), 5.0, np.float32))
    x = tf.constant(np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32))
    y = blob_masks(2, 32)
    hybrid, bce = L.HybridLoss(), keras.losses.BinaryCrossentropy()
    names = [f"head{k}_conv" for k in range(1, 6)] + ["cgm_conv"]
    kernels = [model.get_layer(n).kernel for n in names]
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)
        seg = sum(hybrid(y, out[k]) for k in model.output_names if k != "organ")
        total = seg + bce(_np(L.organ_present(y)), out["organ"])
    grads = tape.gradient(total, kernels)
    for n, g in zip(names, grads):
        assert g is not None and np.all(np.isfinite(g.numpy())) and np.abs(g.numpy()).sum() > 0, n
    # the segmentation loss must not reach the classifier through the gate
    g_cls = tape.gradient(seg, model.get_layer("cgm_conv").kernel)
    assert g_cls is None or np.all(g_cls.numpy() == 0)


def test_tiny_model_learns_trivial_mask():
    keras.utils.set_random_seed(2)
    model = tiny("base", size=32)
    _compile(model, loss="bce_dice", lr=0.1)
    rng = np.random.default_rng(2)
    y = blob_masks(8, 32, seed=3)
    x = (0.6 * y + 0.4 * rng.random(y.shape)).astype(np.float32)  # mask = bright pixels
    hist = model.fit(x, {"mask": y}, batch_size=8, epochs=12, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < 0.6 * losses[0], losses


def test_save_load_keras_and_saved_model(tmp_path, fitted_cgm):
    model, _, _, x = fitted_cgm
    ref = model.predict(x, verbose=0)

    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    got = loaded.predict(x, verbose=0)
    for k in model.output_names:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-6)
    assert loaded.get_layer("mask").apply_in_training is True
    assert isinstance(loaded.loss["mask"], L.HybridLoss)

    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 1], tf.float32)])
        def serve(self, images):
            return self.model(images, training=False)

    sm_dir = str(tmp_path / "sm")
    tf.saved_model.save(Serving(model), sm_dir)
    restored = tf.saved_model.load(sm_dir)
    got = restored.serve(tf.constant(x))
    for k in model.output_names:
        np.testing.assert_allclose(got[k].numpy(), ref[k], atol=1e-6)


# ------------------------------------------------------------------------------------------
# bench/model_flops.py counting rules
# ------------------------------------------------------------------------------------------

def test_model_flops_counting():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "bench", "model_flops.py")
    spec = importlib.util.spec_from_file_location("model_flops", path)
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)

    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)             # 8x8x4
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False)(x)  # 4x4x6
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)             # 8x8x6
    r = mf.count(keras.Model(inp, x))
    assert r["flops"] == 2 * (9 * 2 * 4 * 64 + 9 * 4 * 6 * 16)
    assert r["other"] == 4 * 64 + 2 * 96 + 96 + 6 * 384
    assert r["params"] == (9 * 2 * 4 + 4) + 9 * 4 * 6 + 4 * 6 and r["unknown"] == []
    # the default paper model at 128x128: conv FLOPs as counted (= TF profiler's Conv2D count)
    assert mf.count(build_unet3plus((128, 128, 3)))["flops"] == 98_826_190_848
