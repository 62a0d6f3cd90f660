"""The "auto" schedule's probe: a pair still far apart after the blurred stage runs again on "fine"; a pair that
is close, a run the caller sized, "fast" and compat modes do not switch. Tiny profiles keep the runs short."""
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast import schedule
from idir_fast.api import schedule_probe
from idir_fast.data import phantom_pair
from idir_fast.settings import RunSettings

KW = dict(regularizer="bending", progress=False, seed=3)


@pytest.fixture
def tiny_schedules(monkeypatch):
    """AUTO and FINE shrunk to a few steps; the probe's threshold at 0.5 NCC."""
    auto = replace(schedule.AUTO["cpu"], hidden=(16, 16), epochs=30, points=300,
                   probe=schedule.Probe(stage=0, min_ncc=0.5, schedule="fine", window=5))
    fine = replace(schedule.FINE["cpu"], hidden=(24, 24), epochs=40, points=300)
    monkeypatch.setitem(schedule.AUTO, "cpu", auto)
    monkeypatch.setitem(schedule.FAST, "cpu", replace(auto, probe=None))
    monkeypatch.setitem(schedule.FINE, "cpu", fine)


@pytest.fixture(scope="module")
def pairs():
    """A phantom pair (close after a blurred stage) and the same fixed image against unrelated noise (never)."""
    close = phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=8, seed=2)
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=sitk.GetArrayViewFromImage(
        close.moving).shape).astype(np.float32))
    noise.CopyInformation(close.moving)
    return close, (close.fixed, noise, close.mask)


def test_far_pair_runs_again_on_fine_and_matches_a_fine_run(tiny_schedules, pairs):
    fixed, moving, mask = pairs[1]
    reg = idir_fast.register(fixed, moving, mask, **KW)
    probe = reg.run["schedule_probe"]
    assert probe["escalated_to"] == "fine" and probe["ncc"] < 0.5 and probe["seconds"] > 0
    assert reg.settings.schedule == "fine" and reg.settings.hidden == (24, 24)
    assert sum(s["epochs"] for s in reg.run["stages"]) == 40
    assert reg.timings["optimise_s"] >= probe["seconds"]
    # the thread record counts the first try's steps too, before the fine run's
    assert reg.run["threads_used"]["steps"] > sum(s["epochs_run"] for s in reg.run["stages"])
    direct = idir_fast.register(fixed, moving, mask, schedule="fine", **KW)
    assert "schedule_probe" not in direct.run
    np.testing.assert_array_equal(reg.history["loss"], direct.history["loss"])


def test_close_pair_keeps_the_small_network_and_equals_fast(tiny_schedules, pairs):
    close = pairs[0]
    reg = idir_fast.register(close.fixed, close.moving, close.mask, **KW)
    assert reg.run["schedule_probe"]["escalated_to"] is None and reg.run["schedule_probe"]["ncc"] > 0.5
    assert reg.settings.schedule == "auto" and reg.settings.hidden == (16, 16)
    fast = idir_fast.register(close.fixed, close.moving, close.mask, schedule="fast", **KW)
    assert "schedule_probe" not in fast.run
    np.testing.assert_array_equal(reg.history["loss"], fast.history["loss"])


def test_no_probe_when_the_caller_sized_the_run_or_asked_for_another_schedule(tiny_schedules, pairs):
    fixed, moving, mask = pairs[1]
    reg = idir_fast.register(fixed, moving, mask, epochs=20, **KW)
    assert "schedule_probe" not in reg.run and reg.settings.schedule == "auto"
    for requested in (RunSettings(hidden=(8, 8)), RunSettings(schedule="fast"), RunSettings(schedule="fine"),
                      RunSettings(compat="idir-2022"), RunSettings(batch_size=100), RunSettings(similarity="ncc")):
        assert schedule_probe(requested, requested.resolved()) is None, requested
    assert schedule_probe(RunSettings(), RunSettings().resolved()) is not None


def test_register_many_runs_only_the_far_pairs_again(tiny_schedules, pairs):
    close, far = pairs
    items = [(close.fixed, close.moving, close.mask), far, (close.fixed, close.moving, close.mask)]
    many = idir_fast.register_many(items, pairs_per_batch=3, **KW)
    assert [r.settings.schedule for r in many] == ["auto", "fine", "auto"]
    assert [r.run["pairs_in_batch"] for r in many] == [3, 1, 3]
    assert many[1].settings.fold_guard == schedule.FINE["cpu"].fold_guard > 0  # the batched step guards too
    alone = idir_fast.register(*far, **KW)
    np.testing.assert_allclose(many[1].history["loss"], alone.history["loss"], rtol=2e-5, atol=1e-6)
    kept = idir_fast.register(close.fixed, close.moving, close.mask, **KW)
    np.testing.assert_allclose(many[0].history["loss"], kept.history["loss"], rtol=2e-5, atol=1e-6)


def test_probe_reads_the_mean_of_the_last_steps():
    probe = schedule.Probe(stage=0, min_ncc=0.97, schedule="fine", window=2)
    assert probe.ncc(np.array([-0.1, -0.5, -0.9, -0.95])) == pytest.approx(0.925)
    assert probe.record(0.925)["escalated_to"] == "fine" and probe.record(0.99)["escalated_to"] is None
    assert schedule.profile_for("fast", "cpu").probe is None and schedule.profile_for("auto", "cuda").probe is None


def test_a_cohort_folder_remembers_the_schedules_it_ran_under(monkeypatch):
    from idir_fast.apps.cohort import SUMMARY_FIELDS, settings_hash

    before = settings_hash(RunSettings())
    monkeypatch.setitem(schedule.FINE, "cpu", replace(schedule.FINE["cpu"], hidden=(64, 64, 64)))
    assert settings_hash(RunSettings()) != before  # auto may switch to fine: fine's sizes count
    assert settings_hash(RunSettings(schedule="fast")) == settings_hash(RunSettings(schedule="fast"))
    assert "schedule" in SUMMARY_FIELDS


def test_the_probe_record_survives_save_and_load(tiny_schedules, pairs, tmp_path):
    import json

    fixed, moving, mask = pairs[1]
    reg = idir_fast.register(fixed, moving, mask, **KW)
    out = reg.save(str(tmp_path / "r_"))
    report = json.loads(open(out["report"], encoding="utf-8").read())
    assert report["settings"]["schedule"] == "fine"
    assert report["settings"]["schedule_probe"]["escalated_to"] == "fine"
    loaded = idir_fast.load(out["model"])
    assert loaded.run["schedule_probe"] == reg.run["schedule_probe"]
    assert loaded.settings.hidden == (24, 24)
    np.testing.assert_allclose(loaded.transform_points(np.zeros((1, 3))), reg.transform_points(np.zeros((1, 3))))
