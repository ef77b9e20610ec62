"""A checkpoint write that fails part-way (a full disk, injected where Keras writes the weights)
leaves the previous epoch's checkpoint whole, and the next run resumes from it: Keras' own
BackupAndRestore wrote latest.weights.h5 in place, and a torn file beside the old metadata made
every later run fail."""
from __future__ import annotations

import errno
import json
import os

import keras
import numpy as np
import pytest

from trainer.checkpoints import RESUME_METADATA, WorkerBackupAndRestore


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")


def test_a_failed_checkpoint_write_keeps_the_last_epoch(tmp_path):
    backup = str(tmp_path / "resume")
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[WorkerBackupAndRestore(backup)])
    # The run ended normally: Keras deleted its checkpoint. Run it again, stopped by a full disk
    # at the second epoch's save.
    model = _model()
    real_save = model.save_weights

    def save_then_fill_the_disk(filepath, overwrite=True):
        if saves:
            with open(filepath, "wb") as f:
                f.write(b"\x89HDF\r\n")        # a torn file
            raise OSError(errno.ENOSPC, "No space left on device", filepath)
        saves.append(filepath)
        real_save(filepath, overwrite=overwrite)
    saves = []
    model.save_weights = save_then_fill_the_disk
    with pytest.raises(OSError, match="No space left"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[WorkerBackupAndRestore(backup)])
    assert sorted(os.listdir(backup)) == ["latest.weights.h5", RESUME_METADATA]
    with open(os.path.join(backup, RESUME_METADATA)) as f:
        assert json.load(f)["epoch"] == 1
    after_epoch_1 = _model()
    after_epoch_1.load_weights(os.path.join(backup, "latest.weights.h5"))   # not torn

    resumed = _model()
    history = resumed.fit(x, y, epochs=3, verbose=0,
                          callbacks=[WorkerBackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2        # epochs 2 and 3: resumed, not restarted
    assert not os.path.exists(backup)               # finished: Keras removed the checkpoint


def test_a_corrupt_checkpoint_at_resume_is_named_and_training_starts_over(tmp_path, caplog):
    """A checkpoint damaged after it was written (not by this code: bit rot, a copy cut short)
    is named on the console with the reason, removed, and the run trains from the start rather
    than failing on it run after run (the resume folder is keyed by the inputs)."""
    from trainer.checkpoints import RESUME_WEIGHTS, check_resume_point
    backup = tmp_path / "resume"
    backup.mkdir()
    (backup / RESUME_METADATA).write_text('{"epoch": 2, "batch": 0}')
    (backup / RESUME_WEIGHTS).write_bytes(b"\x89HDF\r\n torn")
    with caplog.at_level("WARNING"):
        assert check_resume_point(str(backup), epochs=3) is False
    assert f"Corrupt checkpoint {backup / RESUME_WEIGHTS}" in caplog.text, caplog.text
    assert not backup.exists()
    x, y = _data()
    history = _model().fit(x, y, epochs=3, verbose=0,
                           callbacks=[WorkerBackupAndRestore(str(backup))])
    assert len(history.history["loss"]) == 3        # from the first epoch
