"""A conversion worker process holds at most max_volumes_in_flight volumes, whatever number of
DoFn threads the runner gives it: the DoFn driven by hand (prefetch within the cap), and a real
multi-threaded Beam run whose reads are slowed so that threads would overlap without the cap."""
from __future__ import annotations

import json
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from preprocessing import case_conversion, volume_slots
from preprocessing.beam_convert import convert_cases
from preprocessing.case_conversion import SUMMARY_TAG, ConvertCaseFn
from preprocessing.case_discovery import discover_lits_cases
from preprocessing.conversion_settings import ConversionSettings
from preprocessing.slices import SliceConfig
from preprocessing.synthetic_ct import write_dataset
from preprocessing.volume_slots import VolumeSlots

CONFIG = SliceConfig(size=(16, 16), keep_fraction=0.5)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slots"))
    write_dataset(root, num_cases=6, in_plane=16, slices_range=(8, 8), progress=False)
    found, errors = discover_lits_cases(root)
    assert len(found) == 6 and not errors
    return found


@pytest.fixture
def fresh_slots(monkeypatch):
    """Every test starts with unused slots (they are per process, shared by every DoFn)."""
    monkeypatch.setattr(volume_slots, "_PER_PROCESS", {})


@pytest.fixture
def slow_reads(monkeypatch):
    """Reads that take 0.15 s, so that reads and conversions of several threads overlap."""
    real = case_conversion.read_case

    def slow(files, timings=None, limits=None):
        time.sleep(0.15)
        return real(files, timings, limits)
    monkeypatch.setattr(case_conversion, "read_case", slow)


def _run_dofn(cases, prefetch: bool, cap: int):
    fn = ConvertCaseFn(CONFIG.to_dict(), prefetch=prefetch, volumes_in_flight=cap)
    fn.setup()
    fn.start_bundle()
    outputs = [out for c in cases for out in fn.process((c, "train"))]
    outputs += [w.value for w in fn.finish_bundle()]
    fn.teardown()
    return outputs, volume_slots.process_slots(cap)


@pytest.mark.parametrize("cap", [1, 2])
def test_the_dofn_holds_no_more_volumes_than_its_cap(cases, fresh_slots, slow_reads, cap):
    outputs, slots = _run_dofn(cases, prefetch=True, cap=cap)
    summaries = [json.loads(p) for tag, p in outputs if tag == SUMMARY_TAG]
    assert sorted(s["case_id"] for s in summaries) == sorted(c.case_id for c in cases)
    assert sum(tag == "train" for tag, _ in outputs) == sum(s["slices_written"]
                                                            for s in summaries)
    # Reading ahead takes the second slot when there is one (a cap of 1: no overlap, no hang).
    assert slots.high_water == cap and slots.held == 0


def test_a_quarantined_case_gives_its_slot_back(cases, fresh_slots, tmp_path):
    broken = tmp_path / "volume-9.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a volume")
    bad = type(cases[0])(case_id="volume-9", image_path=str(broken),
                         label_path=cases[0].label_path)
    outputs, slots = _run_dofn([bad, *cases[:2]], prefetch=True, cap=1)
    assert [tag for tag, _ in outputs].count("quarantine") == 1
    assert [tag for tag, _ in outputs].count(SUMMARY_TAG) == 2
    assert slots.held == 0


def test_threads_of_a_beam_worker_share_the_cap(cases, fresh_slots, slow_reads):
    """Four DoFn threads, 6 slow cases: with room they hold several volumes at once, with a cap
    of 1 never more than one, and every case still converts."""
    for cap, expect_overlap in ((8, True), (1, False)):
        with beam.Pipeline(options=PipelineOptions([
                "--runner=FnApiRunner", "--direct_running_mode=multi_threading",
                "--direct_num_workers=4"])) as p:
            convert_cases(p, [(c, "train") for c in cases], [], ["train"], CONFIG,
                          volumes_in_flight=cap)
        result = p.result.metrics().query()
        converted = [c.committed for c in result["counters"]
                     if c.key.metric.name == "cases_converted"]
        assert sum(converted) == len(cases)
        high = volume_slots.process_slots(cap).high_water
        assert (high >= 2) if expect_overlap else (high == 1), (cap, high)


def test_the_setting_reaches_the_flags_and_is_checked():
    from pipeline.configs import PipelineConfig
    from pipeline.settings_checks import SettingsError, check_settings
    from preprocessing.convert import parse_args, settings_from_args
    args = parse_args(["--data_root", "d", "--output", "o", "--max_volumes_in_flight", "1"])
    assert settings_from_args(args).max_volumes_in_flight == 1
    assert ConversionSettings.from_dict({"max_volumes_in_flight": 3.0}).max_volumes_in_flight == 3
    config = PipelineConfig()
    config.example_gen.max_volumes_in_flight = 0
    with pytest.raises(SettingsError, match="example_gen.max_volumes_in_flight=0"):
        check_settings(config)
    with pytest.raises(ValueError):
        VolumeSlots(0)
