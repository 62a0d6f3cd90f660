"""The benchmarks are code: each peer adapter maps points by the convention it claims (a registration of a known
shift), and the peers and throughput benchmarks run end to end in their quick modes (nothing timed is asserted:
speed is shown by the benchmarks' records, not by tests)."""
import json

import pytest

from benchmarks.peers import adapters
from benchmarks.peers.conventions import GEOMETRIES, QUICK_PROFILES, check_tool

TOOLS = sorted(adapters())


@pytest.mark.parametrize("tool", TOOLS)
def test_each_adapter_maps_a_known_shift(tool):
    adapter = adapters()[tool]
    why = adapter.unavailable()
    if why:
        pytest.skip(f"{tool}: {why}")
    rows = check_tool(tool, adapter, threads=2, profile=QUICK_PROFILES[tool], geometries=GEOMETRIES[1:])
    assert all(r["passed"] for r in rows), rows
    if tool == "ants-syn":  # the check tells the wrong recipes apart
        wrong = rows[0]["wrong_recipes"]
        assert wrong["wrong_recipe_invtransforms"]["mean_mm"] > 3 * rows[0]["residual"]["mean_mm"]
        assert wrong["wrong_frame_RAS"]["mean_mm"] > 3 * rows[0]["residual"]["mean_mm"]


def test_peers_quick_run_writes_one_record_and_plot(tmp_path):
    from benchmarks.peers.__main__ import main

    assert main(["--quick", "--tools", "idir", "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("peers_quick_*.json")).read_text())
    assert record["convention_check"]["passed"]
    assert [r["case"] for r in record["rows"]] == ["blobs"] and "tre" in record["rows"][0]
    assert record["rows"][0]["tre"]["mean"] < record["rows"][0]["tre_initial"]["mean"]
    assert next(tmp_path.glob("peers_quick_*.png")).stat().st_size > 0


def test_throughput_quick_run_measures_each_mode_and_condition(tmp_path):
    from benchmarks.throughput import main

    assert main(["--quick", "--modes", "register-1,cohort-1x1", "--conditions", "idle,busy",
                 "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("throughput_quick_*.json")).read_text())
    got = {(r["condition"], r["mode"]) for r in record["rows"]}
    assert got == {(c, m) for c in ("idle", "busy") for m in ("register-1", "cohort-1x1")}
    for r in record["rows"]:
        assert r["failed"] == 0 and r["pairs_per_hour"] > 0 and r["peak_rss_mib"] > 0 and r["tre_mean_mm"] > 0
