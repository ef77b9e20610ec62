"""Worst-slice pictures: CT (windowed) | truth overlay | prediction overlay coloured by error,
side by side in one PNG per slice (one image per row keeps the page's base64 overhead low).
Panels larger than MAX_PANEL pixels are shrunk and the PNG is palette-coded: a 512x512 CT row
costs ~60-100 kB instead of ~600 kB."""
from __future__ import annotations

import io
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

WINDOW_HU = (-100.0, 240.0)   # abdominal soft-tissue window: liver and lesions stand out
MAX_PANEL = 256
GAP = 4                       # white pixels between the panels
ALPHA = 0.55
LIVER, TUMOUR = 1, 2

# name -> (RGB, what it means), in legend order; page.py draws the legend from this.
COLOURS: Dict[str, Tuple[Tuple[int, int, int], str]] = {
    "liver": ((40, 200, 70), "liver (truth; in the prediction: correctly found)"),
    "tumour": ((255, 215, 0), "tumour (truth; in the prediction: correctly found)"),
    "false_positive": ((235, 35, 35), "false positive: predicted, truth is background"),
    "false_negative": ((30, 120, 255), "false negative: missed, predicted background"),
    "wrong_class": ((220, 0, 220), "wrong class: liver and tumour swapped"),
}


def windowed(image_hu: np.ndarray, window=WINDOW_HU) -> np.ndarray:
    """HU -> grey RGB uint8 [H, W, 3]."""
    low, high = window
    grey = np.clip((image_hu.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    return np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def _paint(rgb: np.ndarray, masks: List[Tuple[np.ndarray, str]]) -> np.ndarray:
    out = rgb.astype(np.float32)
    for mask, name in masks:
        colour = np.asarray(COLOURS[name][0], np.float32)
        out[mask] = (1.0 - ALPHA) * out[mask] + ALPHA * colour
    return out.astype(np.uint8)


def error_masks(truth: np.ndarray, prediction: np.ndarray) -> List[Tuple[np.ndarray, str]]:
    """Each pixel's kind for the prediction panel (see COLOURS)."""
    both = (truth > 0) & (prediction > 0)
    return [(both & (truth == prediction) & (truth == LIVER), "liver"),
            (both & (truth == prediction) & (truth == TUMOUR), "tumour"),
            ((prediction > 0) & (truth == 0), "false_positive"),
            ((truth > 0) & (prediction == 0), "false_negative"),
            (both & (truth != prediction), "wrong_class")]


def panels(image_hu: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
           liver_only: bool = False) -> np.ndarray:
    """The three panels of one slice, joined: uint8 [H, 3W + 2 GAP, 3]. liver_only: the model
    has no tumour class, so its errors are judged on liver (truth tumour counts as liver)."""
    ct = windowed(image_hu)
    truth_rgb = _paint(ct, [(truth == LIVER, "liver"), (truth == TUMOUR, "tumour")])
    scored_truth = (truth > 0).astype(truth.dtype) if liver_only else truth
    prediction_rgb = _paint(ct, error_masks(scored_truth, prediction))
    gap = np.full((ct.shape[0], GAP, 3), 255, np.uint8)
    return np.concatenate([ct, gap, truth_rgb, gap, prediction_rgb], axis=1)


def _shrunk(row: Image.Image, height: int) -> Image.Image:
    if height <= MAX_PANEL:
        return row
    scale = MAX_PANEL / height
    return row.resize((max(1, round(row.width * scale)), MAX_PANEL), Image.BOX)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A palette PNG (256 colours are plenty for grey CT plus five overlay colours)."""
    image = _shrunk(Image.fromarray(rgb, "RGB"), rgb.shape[0])
    buffer = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def slice_counts(truth: np.ndarray, prediction: np.ndarray) -> Dict[str, float]:
    """Liver Dice of the slice and its false positive / negative pixel counts (captions)."""
    t, p = truth > 0, prediction > 0
    denominator = int(t.sum() + p.sum())
    return {"dice": 1.0 if denominator == 0 else 2.0 * int((t & p).sum()) / denominator,
            "false_positive": int((p & ~t).sum()), "false_negative": int((t & ~p).sum())}
