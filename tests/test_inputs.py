"""The Trainer's inputs: tf.data and DALI give the same batches, DALI's shard cache is reused,
augmentation moves image and mask together and keeps masks' values, `auto` picks DALI here.
Most tests use small gzip TFRecords written here; one reads the real tiny pipeline's output."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import artifact_uris
from trainer import dali_input, inputs
from models.losses import organ_present
from trainer.augment import augment_batch
from trainer.augment_config import augment_config

H = W = 32
K = 3
GEOMETRY_ONLY = {"brightness": 0.0, "contrast_range": [1.0, 1.0], "noise_std": 0.0}
STILL = dict(GEOMETRY_ONLY, rotation_degrees=0.0, scale_range=[1.0, 1.0], elastic_alpha=0.0)


def _blobs(rng, n: int) -> np.ndarray:
    """[n, H, W] labels 0/1/2: an ellipse ("liver") holding a smaller disc ("tumour")."""
    y, x = np.mgrid[:H, :W]
    labels = np.zeros((n, H, W), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(10, 22, 2)
        ry, rx = rng.uniform(5, 9, 2)
        labels[i][((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] = 1
        labels[i][(y - cy) ** 2 + (x - cx - 2) ** 2 < 6] = 2
    return labels


def _masks(labels: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return (labels > 0).astype(np.float32)[..., None]
    return np.eye(channels, dtype=np.float32)[labels]


def _write_shards(directory, channels=1, sizes=(10, 7), image_is_mask=False, seed=0):
    """gzip shards of transformed examples; `organ` holds the record's number so the order
    of records can be checked. Returns (file pattern, feature spec)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    number = 0
    for shard, n in enumerate(sizes):
        labels = _blobs(rng, n)
        masks = _masks(labels, channels)
        if image_is_mask:   # intensity = liver mask, in every channel
            images = np.repeat((labels > 0).astype(np.float32)[..., None], K, axis=-1)
        else:
            images = rng.random((n, H, W, K), dtype=np.float32)
        path = os.path.join(str(directory), f"part-{shard:05d}.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for image, mask in zip(images, masks):
                feature = {"image": image, "mask": mask, "organ": np.array([number], np.float32)}
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    k: tf.train.Feature(float_list=tf.train.FloatList(value=v.ravel()))
                    for k, v in feature.items()})).SerializeToString())
                number += 1
    spec = {"image": tf.io.FixedLenFeature([H, W, K], tf.float32),
            "mask": tf.io.FixedLenFeature([H, W, channels], tf.float32),
            "organ": tf.io.FixedLenFeature([1], tf.float32)}
    return os.path.join(str(directory), "part-*.gz"), spec


def _batches(dataset, n):
    """The first n batches as numpy; exactly n, so an empty or short input fails here instead
    of making the comparisons below (zips) vacuous."""
    batches = [(x.numpy(), {k: v.numpy() for k, v in y.items()}) for x, y in dataset.take(n)]
    assert len(batches) == n, f"expected {n} batches, the input gave {len(batches)}"
    return batches


# --- (a) the same batches from both inputs --------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_tfdata_and_dali_give_identical_batches(tmp_path, channels):
    pattern, spec = _write_shards(tmp_path / "data", channels)
    outputs = ["mask", "organ"]
    tfdata = inputs.make_dataset([pattern], spec, outputs, 4, shuffle=False)
    dali = inputs.make_dali_input([pattern], spec, outputs, 4, shuffle=False,
                                  cache_dir=str(tmp_path / "cache"))
    # 6 batches of 4 from 17 records: crosses the end of the epoch (both wrap around).
    a, b = _batches(tfdata, 6), _batches(dali, 6)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya["mask"], yb["mask"])
        np.testing.assert_array_equal(ya["organ"], yb["organ"])
    numbers = np.concatenate([y["organ"].ravel() for _, y in b])
    np.testing.assert_array_equal(numbers, np.arange(24) % 17)
    assert b[0][1]["mask"].shape == (4, H, W, channels)


# --- (b) the cache of uncompressed shards ---------------------------------------------------

def test_dali_cache_reused_and_rebuilt_without_marker(tmp_path):
    pattern, _ = _write_shards(tmp_path / "data")
    files, cache = sorted(glob.glob(pattern)), str(tmp_path / "cache")
    # A killed conversion leaves only a temporary directory; it is not mistaken for a cache.
    os.makedirs(os.path.join(cache, f".{dali_input.cache_key(files)}.tmp-1-dead"))
    first = dali_input.prepare_shards(files, cache)
    assert first.built
    mtimes = {p: os.stat(p).st_mtime_ns for p in first.records + first.indexes}
    second = dali_input.prepare_shards(files, cache)
    assert not second.built and second.records == first.records
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    # DALI's index: "offset size" per record, covering the file exactly.
    for record, index, n in zip(first.records, first.indexes, (10, 7), strict=True):
        rows = [tuple(map(int, line.split())) for line in open(index)]
        assert len(rows) == n and rows[0][0] == 0
        assert rows[-1][0] + rows[-1][1] == os.path.getsize(record)
    with open(os.path.join(first.directory, dali_input.MARKER)) as f:
        assert json.load(f)["records"] == [10, 7]
    os.remove(os.path.join(first.directory, dali_input.MARKER))
    third = dali_input.prepare_shards(files, cache)
    assert third.built and os.path.exists(os.path.join(third.directory, dali_input.MARKER))
    # Other data -> another key.
    assert dali_input.cache_key(files[:1]) != dali_input.cache_key(files)


def _write_tumour_flagged(directory, n=12):
    """One gzip shard of n records; organ = the record's number, has_tumor = 1 for every third."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(str(directory), "part-00000.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for number in range(n):
            floats = {"image": np.full((H, W, K), number, np.float32),
                      "mask": np.zeros((H, W, 1), np.float32),
                      "organ": np.array([number], np.float32)}
            feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=v.ravel()))
                       for k, v in floats.items()}
            feature["has_tumor"] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[int(number % 3 == 0)]))
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())
    spec = {"image": tf.io.FixedLenFeature([H, W, K], tf.float32),
            "mask": tf.io.FixedLenFeature([H, W, 1], tf.float32),
            "organ": tf.io.FixedLenFeature([1], tf.float32)}
    return path, spec


def test_tumour_slices_are_read_repeat_times_per_pass(tmp_path):
    """train.tumour_slice_repeat: with 3, the 4 tumour records of 12 come 3 times each in a
    pass of 20 records, in both inputs; the others once."""
    path, spec = _write_tumour_flagged(tmp_path / "data")
    expected = {n: 3 if n % 3 == 0 else 1 for n in range(12)}

    def counts(dataset, batches):
        numbers = np.concatenate([y["organ"].ravel() for _, y in _batches(dataset, batches)])
        return {int(n): int(c) for n, c in zip(*np.unique(numbers, return_counts=True))}

    tfdata = inputs.make_dataset([path], spec, ["mask", "organ"], 4, shuffle=True,
                                 shuffle_buffer=64, tumour_repeat=3)
    assert counts(tfdata, 5) == expected
    dali = inputs.make_dali_input([path], spec, ["mask", "organ"], 4, shuffle=False,
                                  cache_dir=str(tmp_path / "cache"), tumour_repeat=3)
    assert counts(dali, 5) == expected
    shards = dali_input.prepare_shards([path], str(tmp_path / "cache"), tumour_repeat=3)
    assert not shards.built and shards.directory.endswith("-tumour3")   # its own cache entry
    with open(os.path.join(shards.directory, dali_input.MARKER)) as f:
        assert json.load(f)["records"] == [20]
    plain = inputs.make_dataset([path], spec, ["mask", "organ"], 4, shuffle=True,
                                shuffle_buffer=64)
    assert counts(plain, 3) == {n: 1 for n in range(12)}


# --- (c) augmentation -----------------------------------------------------------------------

def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds both values of a [B, H, W] 0/1 mask."""
    m = tf.constant(mask[..., None])
    dilated = tf.nn.max_pool2d(m, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-m, 3, 1, "SAME")
    return (dilated - eroded).numpy()[..., 0] > 0


def _check_moved_together(image: np.ndarray, mask: np.ndarray, original: np.ndarray):
    """image (all channels = the liver mask before augmentation) and mask augmented alike."""
    assert set(np.unique(mask)) <= {0.0, 1.0}
    liver = mask[..., 0]
    disagree = (image[..., K // 2] > 0.5) != (liver > 0.5)
    assert not (disagree & ~_boundary(liver)).any()     # only at the edge of the organ
    assert disagree.mean() < 0.02
    assert (liver != original).mean() > 0.005              # something did move


def test_augmentation_moves_image_and_mask_together():
    labels = _blobs(np.random.default_rng(1), 16)
    mask = _masks(labels, 1)
    image = np.repeat(mask, K, axis=-1)
    cfg = augment_config(GEOMETRY_ONLY)
    out_image, out_mask, organ = augment_batch(tf.constant(image), tf.constant(mask),
                                               tf.constant([3, 4], tf.int64), cfg)
    _check_moved_together(out_image.numpy(), out_mask.numpy(), mask[..., 0])
    np.testing.assert_array_equal(organ.numpy(), organ_present(out_mask).numpy())


def test_augmentation_keeps_one_hot_masks_one_hot():
    masks = tf.constant(_masks(_blobs(np.random.default_rng(2), 8), 3))
    images = tf.random.stateless_uniform([8, H, W, K], [0, 0])
    _, out, organ = augment_batch(images, masks, tf.constant([5, 6], tf.int64),
                                  augment_config({"rotation_degrees": 25.0,
                                                  "scale_range": [0.7, 1.3]}))
    out = out.numpy()
    assert set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out.sum(-1), 1.0)
    assert set(np.unique(np.argmax(out, -1))) == {0, 1, 2}
    np.testing.assert_array_equal(organ.numpy()[:, 0], out[..., 1:].max(axis=(1, 2, 3)))


def test_augmentation_identity_when_magnitudes_are_zero_and_no_flip_by_default():
    mask = tf.constant(_masks(_blobs(np.random.default_rng(3), 8), 1))
    image = tf.random.stateless_uniform([8, H, W, K], [1, 1])
    seed = tf.constant([7, 8], tf.int64)
    out_image, out_mask, _ = augment_batch(image, mask, seed, augment_config(STILL))
    np.testing.assert_array_equal(out_image.numpy(), image.numpy())
    np.testing.assert_array_equal(out_mask.numpy(), mask.numpy())
    # With flips allowed (and nothing else), about half the images come out mirrored.
    flipped, _, _ = augment_batch(image, mask, seed, augment_config(dict(STILL,
                                                                         flip_left_right=True)))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped.numpy(), image.numpy())]
    same = [np.array_equal(f, i) for f, i in zip(flipped.numpy(), image.numpy())]
    assert all(m or s for m, s in zip(mirrored, same)) and 0 < sum(mirrored) < 8
    # Defaults: a left-to-right ramp stays nearer to itself than to its mirror image.
    ramp = tf.broadcast_to(tf.linspace(0.0, 1.0, W)[None, None, :, None], [8, H, W, K])
    out, _, _ = augment_batch(ramp, mask, seed, augment_config(None))
    for o, i in zip(out.numpy(), ramp.numpy()):
        assert np.abs(o - i).mean() < np.abs(o - i[:, ::-1]).mean()


def test_organ_present_reads_foreground_channels():
    one = np.zeros((2, 4, 4, 1), np.float32)
    one[1, 2, 2] = 1
    np.testing.assert_array_equal(organ_present(tf.constant(one)).numpy(), [[0], [1]])
    hot = np.zeros((2, 4, 4, 3), np.float32)
    hot[..., 0] = 1
    hot[1, 1, 1] = [0, 0, 1]
    np.testing.assert_array_equal(organ_present(tf.constant(hot)).numpy(), [[0], [1]])


def test_tfdata_augmentation_is_reproducible(tmp_path):
    pattern, spec = _write_shards(tmp_path, image_is_mask=True)

    def batches():
        return _batches(inputs.make_dataset([pattern], spec, ["mask"], 4, shuffle=False,
                                            seed=3, augment={}), 2)
    for (xa, ya), (xb, yb) in zip(batches(), batches(), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya["mask"], yb["mask"])


@pytest.mark.parametrize("channels", [1, 3])
def test_dali_augmentation_moves_image_and_mask_together(tmp_path, channels):
    pattern, spec = _write_shards(tmp_path / "data", channels, image_is_mask=True)

    def batches(augment, seed=0):
        return _batches(inputs.make_dali_input(
            [pattern], spec, ["mask", "organ"], 4, shuffle=False, seed=seed,
            cache_dir=str(tmp_path / "cache"), augment=augment), 4)
    plain = batches(None)
    augmented = batches(GEOMETRY_ONLY)
    # strict zips, and _batches gives exactly 4 batches: an empty input cannot pass vacuously.
    for (_, y0), (x, y) in zip(plain, augmented, strict=True):
        liver = y["mask"] if channels == 1 else y["mask"][..., 1:].sum(-1, keepdims=True)
        original = y0["mask"] if channels == 1 else y0["mask"][..., 1:].sum(-1, keepdims=True)
        _check_moved_together(x, liver, original[..., 0])
        if channels > 1:
            np.testing.assert_array_equal(y["mask"].sum(-1), 1.0)
        np.testing.assert_array_equal(y["organ"], organ_present(y["mask"]).numpy())
    # Same seed, same augmentation; nothing to do: the batches as read.
    for (xa, ya), (xb, yb) in zip(augmented, batches(GEOMETRY_ONLY), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya["mask"], yb["mask"])
    for (xa, ya), (xb, yb) in zip(plain, batches(STILL), strict=True):
        np.testing.assert_allclose(xb, xa, atol=1e-6)
        np.testing.assert_array_equal(yb["mask"], ya["mask"])


# --- (d) the entry point --------------------------------------------------------------------

def test_auto_picks_dali_here(tmp_path):
    assert inputs.resolve_input("auto")[0] == "dali"
    assert inputs.resolve_input("tfdata")[0] == "tfdata"
    with pytest.raises(ValueError):
        inputs.resolve_input("torch")
    pattern, spec = _write_shards(tmp_path / "data")
    cfg = {"batch_size": 4, "shuffle_buffer": 8, "input": "auto", "augment": {}}
    train, evaluation, description = inputs.make_input_datasets(
        [pattern], [pattern], spec, ["mask"], cfg, cache_dir=str(tmp_path / "cache"))
    assert description.startswith("DALI") and "augmentation p=1" in description
    image, targets = next(iter(train))
    assert image.shape == (4, H, W, K) and targets["mask"].shape == (4, H, W, 1)
    images, masks = inputs.first_batch(evaluation)
    plain = _batches(inputs.make_dataset([pattern], spec, ["mask"], 4, shuffle=False), 1)
    np.testing.assert_array_equal(images, plain[0][0])
    _, _, description = inputs.make_input_datasets(
        [pattern], [pattern], spec, ["mask"], dict(cfg, input="tfdata",
                                                   augment={"enabled": False}))
    assert description.startswith("tf.data") and "augmentation off" in description


def test_dali_cache_directory_next_to_trainer_outputs():
    assert inputs.dali_cache_directory("/p/root/Trainer/model_run/7") == \
        "/p/root/Trainer/dali_cache"
    assert inputs.dali_cache_directory("gs://b/root/Trainer/model_run/7") == \
        inputs.TEMP_CACHE_DIR


MULTI_REPLICA = r"""
import json, sys
import keras, numpy as np, tensorflow as tf
from trainer.device import resolve_device_settings
from trainer import inputs
pattern, cache = sys.argv[1], sys.argv[2]
device = resolve_device_settings("fp32", "off", cpu_replicas=2)
strategy = device.strategy()
spec = {"image": tf.io.FixedLenFeature([32, 32, 3], tf.float32),
        "mask": tf.io.FixedLenFeature([32, 32, 1], tf.float32),
        "organ": tf.io.FixedLenFeature([1], tf.float32)}
cfg = {"batch_size": 4, "shuffle_buffer": 8, "input": "dali", "augment": {}}
train, evaluation, description = inputs.make_input_datasets(
    [pattern], [pattern], spec, ["mask", "organ"], cfg, strategy=strategy, cache_dir=cache)
batch = next(iter(evaluation))[1]["organ"]
per_replica = [np.asarray(v).ravel().tolist() for v in strategy.experimental_local_results(batch)]
images, masks = inputs.first_batch(evaluation)
with strategy.scope():
    x = keras.Input((32, 32, 3))
    mask = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="mask")(x)
    organ = keras.layers.Dense(1, activation="sigmoid", name="organ")(
        keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(x, {"mask": mask, "organ": organ})
    model.compile("sgd", loss={"mask": "bce", "organ": "bce"})
history = model.fit(train, steps_per_epoch=3, epochs=1, validation_data=evaluation,
                    validation_steps=2, verbose=0)
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "organ": per_replica,
                              "description": description,
                              "first_batch": [list(images.shape), list(masks.shape)],
                              "loss": history.history["loss"][-1]}))
"""


def test_dali_one_pipeline_per_replica_on_two_cpu_replicas(tmp_path):
    pattern, _ = _write_shards(tmp_path / "data")
    out = subprocess.run([sys.executable, "-c", MULTI_REPLICA, pattern, str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads([l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    assert result["replicas"] == 2 and "2 pipeline(s)" in result["description"]
    # Each replica's pipeline reads its own shard of the 17 records (0-7 and 8-16).
    assert result["organ"] == [[0.0, 1.0], [8.0, 9.0]]
    assert result["first_batch"] == [[4, H, W, K], [4, H, W, 1]]
    assert np.isfinite(result["loss"])


# --- the real Transform output --------------------------------------------------------------

@pytest.mark.pipeline
def test_inputs_on_real_transform_output(runs, tmp_path):
    import tensorflow_transform as tft
    output_dir = runs[0]
    examples = artifact_uris(output_dir, "Transform", "transformed_examples")[-1]
    graph = artifact_uris(output_dir, "Transform", "transform_graph")[-1]
    spec = tft.TFTransformOutput(graph).transformed_feature_spec()
    outputs = ["mask", "organ"]
    evaluation = [os.path.join(examples, "Split-eval", "*")]
    a = _batches(inputs.make_dataset(evaluation, spec, outputs, 4, shuffle=False), 3)
    b = _batches(inputs.make_dali_input(evaluation, spec, outputs, 4, shuffle=False,
                                        cache_dir=str(tmp_path)), 3)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya["mask"], yb["mask"])
        np.testing.assert_array_equal(ya["organ"], yb["organ"])
    train = [os.path.join(examples, "Split-train", "*")]
    cfg = {"batch_size": 4, "shuffle_buffer": 16, "input": "auto", "augment": {}}
    train_ds, _, description = inputs.make_input_datasets(train, evaluation, spec, outputs, cfg,
                                                          cache_dir=str(tmp_path))
    assert description.startswith("DALI")
    train_batches = list(train_ds.take(2))
    assert len(train_batches) == 2, "the train split gave no batches"
    for image, targets in train_batches:
        assert image.shape == a[0][0].shape
        assert set(np.unique(targets["mask"].numpy())) <= {0.0, 1.0}
