"""The one description of the example format, read by the ExampleGen, Transform, Trainer,
Evaluator and inference. `schema/schema.pbtxt` mirrors the raw features (a test keeps them equal).

Raw examples (ExampleGen output), one per selected axial slice:
  image         bytes   raw little-endian int16 HU, clipped to the window, C-order [H, W, K]
                        (K = 2*context+1 adjacent slices as channels; the centre slice is K//2)
  image_shape   int64[3]  H, W, K
  label         bytes   raw uint8 labels [H, W] of the centre slice: 0 background, 1 liver, 2 tumour
  volume_id     bytes   case id (e.g. "volume-7"); the split is by this feature
  slice_index   int64   z index of the centre slice in the canonical (RAS) volume
  num_slices    int64   number of slices of the canonical volume
  spacing       float[3] voxel spacing in mm of the canonical volume (x, y, z), before resampling
  has_liver     int64   1 if the slice has liver (labels 1 or 2)
  has_tumor     int64   1 if the slice has tumour (label 2)
  liver_fraction float  fraction of the slice's pixels that are liver or tumour
  tumor_fraction float  fraction of the slice's pixels that are tumour

Transformed examples (Transform output) add the model's inputs and targets:
  image  float32[H, W, K] normalized;  mask float32[H, W, C]: C=1 liver (incl. tumour) with
         classes "liver", C=3 one-hot background / liver / tumour with classes "liver_tumor";
  organ  float32[1] liver present (target of the classification-guided module)
and pass volume_id, slice_index, has_liver, has_tumor through for evaluation slicing.
"""

IMAGE = "image"
IMAGE_SHAPE = "image_shape"
LABEL = "label"
VOLUME_ID = "volume_id"
SLICE_INDEX = "slice_index"
NUM_SLICES = "num_slices"
SPACING = "spacing"
HAS_LIVER = "has_liver"
HAS_TUMOR = "has_tumor"
LIVER_FRACTION = "liver_fraction"
TUMOR_FRACTION = "tumor_fraction"

# Transformed-only features.
MASK = "mask"
ORGAN = "organ"

# Target modes (TransformConfig.classes) -> channels of the transformed mask, which are the
# model's output channels: "liver" one channel (liver incl. tumour), "liver_tumor" one-hot
# background / liver / tumour.
MASK_CHANNELS = {"liver": 1, "liver_tumor": 3}
TUMOR_LABEL = 2   # tumour's label value, and its channel in the three-class mask


def check_classes(classes: str) -> str:
    if classes not in MASK_CHANNELS:
        raise ValueError(f"classes must be one of {tuple(MASK_CHANNELS)}, got {classes!r}")
    return classes

IMAGE_DTYPE = "<i2"   # little-endian int16 HU
LABEL_DTYPE = "u1"    # uint8 labels

# Raw feature -> (kind, length). kind: bytes | int | float. The schema test checks this table
# against schema/schema.pbtxt.
RAW_FEATURES = {
    IMAGE: ("bytes", 1),
    IMAGE_SHAPE: ("int", 3),
    LABEL: ("bytes", 1),
    VOLUME_ID: ("bytes", 1),
    SLICE_INDEX: ("int", 1),
    NUM_SLICES: ("int", 1),
    SPACING: ("float", 3),
    HAS_LIVER: ("int", 1),
    HAS_TUMOR: ("int", 1),
    LIVER_FRACTION: ("float", 1),
    TUMOR_FRACTION: ("float", 1),
}

# Features that Transform passes through unchanged so TFMA can slice on them.
PASSTHROUGH_FEATURES = (VOLUME_ID, SLICE_INDEX, HAS_LIVER, HAS_TUMOR)
