"""The real CT crop (LiTS volume 117, from the wheel liver-ct-segmentation-package 1.6.0):
the strict MRC reader on the real files and on small broken ones, and the two NIfTI cases
scripts/fetch_real_ct.sh writes, read back by the project's own reader (preprocessing/nifti.py,
shared by the ExampleGen and predict.py) with identical pixels and the stated spacing.

The data are fetched by `make setup` (scripts/fetch_real_ct.sh) into .cache/real_ct/; without
them these tests fail, saying so, rather than skip."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import zipfile

import nibabel as nib
import numpy as np
import pytest

from preprocessing import lits_crop
from preprocessing.case_discovery import discover_lits_cases
from preprocessing.mrc import (HEADER_BYTES, MrcError, mrc_bytes, parse_header, read_mrc,
                               read_mrc_bytes)
from preprocessing.nifti import CaseError, canonicalize_case, load_case, read_case
from preprocessing.slices import SliceConfig, prepare_slices, volume_to_model_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "real_ct")
WHEEL = os.path.join(CACHE, lits_crop.WHEEL_NAME)
LITS = os.path.join(CACHE, "lits")
LIVER_VOXELS, TUMOUR_VOXELS = 485_268, 130_083
# Per half (inferior: crop slices 0-63, superior: 64-127): (liver, tumour) voxels.
HALF_COUNTS = [(135_921, 14_627), (349_347, 115_456)]
HU_RANGE = (-1063.25, 1877.25)


def _need(path: str) -> str:
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run `make setup` (it runs scripts/fetch_real_ct.sh, "
                    "which downloads the real CT crop into .cache/real_ct/)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def members():
    with zipfile.ZipFile(_need(WHEEL)) as archive:
        return {m: archive.read(m) for m in (lits_crop.IMAGE_MEMBER, lits_crop.LABEL_MEMBER)}


@pytest.fixture(scope="module")
def crop(members):
    """(HU, labels) as the MRC reader gives them: (z, y, x) = towards L, P, S."""
    return (read_mrc_bytes(members[lits_crop.IMAGE_MEMBER], "img"),
            read_mrc_bytes(members[lits_crop.LABEL_MEMBER], "lab"))


@pytest.fixture(scope="module")
def cases():
    _need(os.path.join(LITS, lits_crop.DONE_FILE))
    found, errors = discover_lits_cases(LITS)
    assert errors == []
    return found


# --- the wheel and the MRC reader on the real files ----------------------------------------------

def test_the_wheel_is_the_pinned_one():
    with open(_need(WHEEL), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(REPO, "scripts", "fetch_real_ct.sh")) as f:
        pinned = re.search(r'^WHEEL_SHA256="([0-9a-f]{64})"$', f.read(), re.M).group(1)
    assert digest == pinned == lits_crop.WHEEL_SHA256


def test_the_real_mrc_files(members, crop):
    hu, labels = crop
    assert hu.shape == labels.shape == (128, 128, 128)
    assert hu.dtype == np.float32 and labels.dtype == np.uint16
    assert int((labels == 1).sum()) == LIVER_VOXELS
    assert int((labels == 2).sum()) == TUMOUR_VOXELS
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert (float(hu.min()), float(hu.max())) == HU_RANGE
    # Means of 2 x 2 x 2 integer-HU voxels: every value a multiple of 1/8 (downsampled 2x).
    assert lits_crop.eighths_fraction(hu) == 1.0
    image_header = parse_header(members[lits_crop.IMAGE_MEMBER], "img")
    label_header = parse_header(members[lits_crop.LABEL_MEMBER], "lab")
    assert (image_header.mode, label_header.mode) == (2, 6)
    assert image_header.nsymbt == label_header.nsymbt == 0
    assert image_header.voxel_size is None and label_header.voxel_size is None  # none stored


def test_the_wheel_reader_gives_the_same_arrays(crop):
    hu, labels = lits_crop.read_wheel(lits_crop.find_wheel(CACHE))
    np.testing.assert_array_equal(hu, crop[0])
    np.testing.assert_array_equal(labels, crop[1])
    assert labels.dtype == np.uint8


# --- the MRC reader on small hand-made files -----------------------------------------------------

SMALL = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) - 5.5


def _patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


@pytest.mark.parametrize("dtype", ["i1", "i2", "f4", "u2", "f2"])
def test_a_written_mrc_reads_back(dtype):
    array = (np.arange(60).reshape(3, 4, 5) % 50).astype(dtype)
    back = read_mrc_bytes(mrc_bytes(array), "x.mrc")
    assert back.dtype == array.dtype and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)


def test_the_extended_header_shifts_the_data():
    plain = mrc_bytes(SMALL)
    extended = _patched(plain[:HEADER_BYTES], 92, "<i", 16) + b"\xff" * 16 + plain[HEADER_BYTES:]
    np.testing.assert_array_equal(read_mrc_bytes(extended, "ext.mrc"), SMALL)


def test_a_big_endian_file():
    header = _patched(mrc_bytes(SMALL)[:HEADER_BYTES], 0, ">4i", 4, 3, 2, 2)
    header = _patched(header, 64, ">3i", 1, 2, 3)
    header = header[:212] + b"\x11\x11\x00\x00" + header[216:]
    back = read_mrc_bytes(header + SMALL.astype(">f4").tobytes(), "be.mrc")
    np.testing.assert_array_equal(back, SMALL)
    assert back.dtype.byteorder in "=<"


def test_the_voxel_size_when_a_cell_is_stored():
    data = _patched(mrc_bytes(SMALL), 40, "<3f", 8.0, 6.0, 4.0)   # cella / (mx, my, mz)
    assert parse_header(data, "c.mrc").voxel_size == (2.0, 2.0, 2.0)


_GOOD = mrc_bytes(SMALL)
BROKEN = {
    "truncated data": (_GOOD[:-1], r"truncated: 1119 bytes, the header says 1120"),
    "truncated header": (_GOOD[:500], r"truncated: 500 bytes, shorter than the 1024-byte"),
    "empty": (b"", r"truncated: 0 bytes"),
    "oversized": (_GOOD + b"\0" * 8, r"oversized: 1128 bytes, the header says 1120"),
    "complex mode": (_patched(_GOOD, 12, "<i", 4), r"unsupported mode 4 \(complex float32\)"),
    "unknown mode": (_patched(_GOOD, 12, "<i", 7), r"unsupported mode 7 \(unknown\)"),
    "no MAP": (_GOOD[:208] + b"NOPE" + _GOOD[212:], r"not an MRC file: bytes 208-211 are"),
    "a NIfTI file": (b"\x5c\x01\x00\x00" + b"\0" * 1100, r"not an MRC file"),
    "bad stamp": (_GOOD[:212] + b"\x00\x00\x00\x00" + _GOOD[216:], r"unknown machine stamp"),
    "zero dimension": (_patched(_GOOD, 0, "<i", 0), r"bad dimensions nx, ny, nz = 0, 3, 2"),
    "permuted axes": (_patched(_GOOD, 64, "<3i", 3, 2, 1),
                      r"axis order mapc, mapr, maps = \(3, 2, 1\)"),
    "negative nsymbt": (_patched(_GOOD, 92, "<i", -4), r"negative extended header size"),
    "extended header missing": (_patched(_GOOD, 92, "<i", 64), r"truncated: 1120 bytes, the "
                                                               r"header says 1184 \(1024 header "
                                                               r"\+ 64 extended"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_mrc_gets_an_error_naming_the_file_and_the_reason(kind):
    data, reason = BROKEN[kind]
    with pytest.raises(MrcError, match=r"^broken\.mrc: " + reason) as raised:
        read_mrc_bytes(data, "broken.mrc")
    assert raised.value.path == "broken.mrc" and isinstance(raised.value, CaseError)


def test_read_mrc_names_the_path(tmp_path):
    path = tmp_path / "cut.mrc"
    path.write_bytes(_GOOD[:-4])
    with pytest.raises(MrcError, match=f"^{re.escape(str(path))}: truncated"):
        read_mrc(str(path))
    with pytest.raises(MrcError, match="no-such.mrc: file not found"):
        read_mrc(str(tmp_path / "no-such.mrc"))
    path.write_bytes(_GOOD)
    np.testing.assert_array_equal(read_mrc(str(path)), SMALL)


# --- the written NIfTI cases, read by the project's reader ---------------------------------------

def _ras(array: np.ndarray) -> np.ndarray:
    """Stored axes L, P, S -> RAS+ (the reader's canonical order): flip the first two."""
    return array[::-1, ::-1, :]


def test_the_cases_read_back_with_the_same_pixels_and_spacing(cases, crop):
    hu, labels = crop
    with open(os.path.join(LITS, lits_crop.DONE_FILE)) as f:
        spacing_zyx = json.load(f)["spacing_mm_zyx"]
    assert spacing_zyx == list(lits_crop.DEFAULT_SPACING_MM)
    assert [c.case_id for c in cases] == ["volume-0", "volume-1"]
    for (first, hu_half, label_half), files, counts in zip(
            lits_crop.halves(hu, labels), cases, HALF_COUNTS):
        image = nib.load(files.image_path)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        np.testing.assert_allclose(image.header.get_zooms(), spacing_zyx[::-1], rtol=1e-6)
        case = load_case(files)
        assert case.hu.dtype == np.float32 and case.hu.shape == (128, 128, 64)
        np.testing.assert_array_equal(case.hu, _ras(hu_half))
        np.testing.assert_array_equal(case.labels, _ras(label_half))
        np.testing.assert_allclose(case.spacing, spacing_zyx[::-1], rtol=1e-6)
        # The ExampleGen's fast path (stored values, scaling applied per slice) sees the same.
        fast = canonicalize_case(read_case(files), hu=False)
        np.testing.assert_array_equal(fast.stored, _ras(hu_half))
        assert fast.scaling == (1.0, 0.0)
        assert (int((case.labels == 1).sum()), int((case.labels == 2).sum())) == counts
    assert sum(c[0] for c in HALF_COUNTS) == LIVER_VOXELS
    assert sum(c[1] for c in HALF_COUNTS) == TUMOUR_VOXELS


def test_the_halves_sit_where_they_were_in_the_crop(cases):
    inferior, superior = (nib.load(c.image_path).affine for c in cases)
    step = lits_crop.DEFAULT_SPACING_MM[0]
    np.testing.assert_allclose(superior[:3, 3] - inferior[:3, 3], [0, 0, 64 * step], atol=1e-4)
    np.testing.assert_allclose(superior[:3, :3], inferior[:3, :3])


def test_the_orientation_matches_the_anatomy(cases):
    """In RAS+ (x to the patient's Right, y Anterior, z Superior): the liver lies right of and
    anterior to the spine, and the lung bases (air) are in the superior half's top slices."""
    both = [load_case(c) for c in cases]
    hu = np.concatenate([c.hu for c in both], axis=2)
    labels = np.concatenate([c.labels for c in both], axis=2)
    liver = np.array(np.nonzero(labels > 0)).mean(axis=1)
    bone = np.array(np.nonzero(hu > 400)).mean(axis=1)
    assert liver[0] > bone[0] + 10 and liver[1] > bone[1] + 10
    air = (hu < -500).sum(axis=(0, 1))
    assert air[-16:].sum() > 3 * air[:16].sum()


def test_the_example_gen_and_inference_see_the_same_slices(cases):
    """The ExampleGen's path (stored values, selected slices) and predict.py's (every slice)."""
    config = SliceConfig(size=(64, 64), keep_fraction=0.2)
    for files in cases:
        examples = prepare_slices(canonicalize_case(read_case(files), hu=False), config,
                                  selected_only=True)
        model_input = volume_to_model_input(load_case(files), config)
        assert len(examples.selected) == 64      # the liver is in every slice of the crop
        np.testing.assert_array_equal(model_input[..., config.context], examples.image)


def test_the_cli_writes_the_same_cases_and_the_spacing_asked_for(tmp_path, capsys, cases):
    out = str(tmp_path / "lits")
    assert lits_crop.main(["--wheel", CACHE, "--output", out,
                           "--spacing_mm", "2.5", "1.5", "1.25"]) == 0
    printed = capsys.readouterr().out
    assert "volume-0: 135,921 liver, 14,627 tumour voxels" in printed
    assert "volume-1: 349,347 liver, 115,456 tumour voxels" in printed
    assert "HU -1063.25 .. 1877.25" in printed
    written, errors = discover_lits_cases(out)
    assert errors == [] and len(written) == 2
    for new, old in zip(written, cases):
        case, reference = load_case(new), load_case(old)
        np.testing.assert_allclose(case.spacing, (1.25, 1.5, 2.5), rtol=1e-6)
        np.testing.assert_array_equal(case.hu, reference.hu)
        np.testing.assert_array_equal(case.labels, reference.labels)
    notice = (tmp_path / "lits" / "NOTICE").read_text()
    for needed in ("CC-BY-SA 4.0", "Bilic", "Antonelli", "Simpson", "Medical Segmentation "
                   "Decathlon", "liver-ct-segmentation-package 1.6.0", "MIT",
                   "Assumed: 2.5 x 1.5 x 1.25 mm"):
        assert needed in notice, needed


def _zip(path, members) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_a_bad_wheel_gets_an_error_naming_it(tmp_path, capsys):
    with pytest.raises(CaseError, match=f"{re.escape(str(tmp_path))}: no {lits_crop.WHEEL_NAME}"):
        lits_crop.find_wheel(str(tmp_path))
    other = _zip(tmp_path / "other.whl", {"x.txt": b"x"})
    with pytest.raises(CaseError, match=r"other\.whl: sha256 [0-9a-f]{64} is not the pinned"):
        lits_crop.read_wheel(other)
    with pytest.raises(CaseError, match=r"other\.whl: no member .*img_117\.mrc"):
        lits_crop.read_wheel(other, check_sha256=False)
    cut = _zip(tmp_path / "cut.whl", {lits_crop.IMAGE_MEMBER: _GOOD[:-1],
                                      lits_crop.LABEL_MEMBER: _GOOD})
    with pytest.raises(MrcError, match=r"cut\.whl!.*img_117\.mrc: truncated"):
        lits_crop.read_wheel(cut, check_sha256=False)
    assert lits_crop.main(["--wheel", other, "--output", str(tmp_path / "o")]) == 1
    assert "lits_crop: error: " in capsys.readouterr().err


# --- post-processing and lesion metrics on real label shapes -----------------------------------

def test_post_processing_leaves_a_real_reference_almost_untouched(crop):
    """The reference itself is one liver with its lesions: post-processing may only fill
    enclosed holes (none is a big share of the liver) and keeps every tumour voxel."""
    from inference.postprocess import postprocess
    _, labels = crop
    labels = labels.astype(np.uint8)
    spacing = lits_crop.DEFAULT_SPACING_MM   # isotropic: the axis order does not matter
    cleaned, report = postprocess(labels, spacing)
    assert report["small_tumours_dropped"] == 0 or report["small_tumour_voxels_dropped"] < 50
    assert report["tumour_outside_liver_voxels_removed"] == 0, report
    liver = np.count_nonzero(labels)
    assert abs(np.count_nonzero(cleaned) - liver) < 0.01 * liver, report
    print("post-processing the real reference:", report)


def test_lesion_metrics_on_real_lesions(crop):
    """The reference against itself finds every lesion (79 components, 57 of them under 10 mm:
    LiTS references hold many small fragments); with the tumour eroded by one voxel the small
    lesions fall under the 0.5 overlap first, the ones over 20 mm are all still found, and the
    burden error is negative."""
    from scipy import ndimage
    from evaluation.lesion_metrics import measure_lesions
    _, labels = crop
    labels = labels.astype(np.uint8)
    spacing = lits_crop.DEFAULT_SPACING_MM
    same = measure_lesions(labels, labels, spacing).metrics()
    assert (same["lesion_ref"], same["lesion_ref_lt10mm"], same["lesion_ref_gt20mm"]) == \
        (79, 57, 7), same
    assert same["lesion_recall"] == 1.0 and same["lesion_precision"] == 1.0
    assert same["tumour_burden_error"] == 0.0
    eroded = labels.copy()
    eroded[(labels == 2) & ~ndimage.binary_erosion(labels == 2)] = 1
    worse = measure_lesions(labels, eroded, spacing).metrics()
    assert worse["tumour_burden_error"] < 0, worse
    assert worse["lesion_recall_gt20mm"] == 1.0, worse
    assert worse["lesion_recall_lt10mm"] < worse["lesion_recall_gt20mm"], worse
