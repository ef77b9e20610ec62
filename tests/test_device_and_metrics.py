"""Device defaults (CPU: bf16 without XLA; overrides win) and the TFMA Dice arithmetic."""
import pytest

from pipeline.tfma_dice import dice_from_counts, iou_from_counts
from trainer.device import resolve_device_settings


def test_cpu_defaults_to_bfloat16_without_xla():
    s = resolve_device_settings("auto", "auto")
    assert s.num_gpus == 0
    assert s.policy == "mixed_bfloat16" and s.jit_compile is False
    assert "CPU" in s.reason


def test_every_switch_can_be_overridden():
    s = resolve_device_settings("fp32", "on")
    assert s.policy == "fp32" and s.jit_compile is True
    with pytest.raises(ValueError):
        resolve_device_settings("int8", "auto")
    with pytest.raises(ValueError):
        resolve_device_settings("auto", "maybe")


def test_dice_and_iou_from_counts():
    assert dice_from_counts(0, 0, 0) == 1.0 and iou_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 10, 0) == 0.0
    assert dice_from_counts(5, 10, 10) == pytest.approx(0.5)
    assert iou_from_counts(5, 10, 10) == pytest.approx(5 / 15)
