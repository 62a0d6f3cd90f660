"""The benchmark command runs in a quick mode so it cannot rot (timings are not asserted: speed is shown by the
benchmark itself, not by tests)."""
import csv
import json

from idir_fast.apps.bench import matmul_flops
from idir_fast.apps.cli import main


def test_bench_quick_mode_prints_the_table_and_appends_results(tmp_path, capsys):
    rc = main(["bench", "--quick", "--device", "cpu", "--results-dir", str(tmp_path), "--profile",
               "--throughput", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    for word in ("reference", "torch", "bending", "passes", "speed-up", "floor ms", "profile: backend",
                 "pairs/h"):
        assert word in out
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 8 and {r["backend"] for r in rows} == {"reference", "torch"}
    assert {r["passes"] for r in rows if r["backend"] == "reference"} == {"1", "4", "13"}
    run = json.loads(next(p for p in tmp_path.glob("*.json") if not p.name.startswith("throughput")).read_text())
    assert json.loads(next(tmp_path.glob("throughput_*.json")).read_text())["throughput"]["pairs"] == 2
    assert {"device_name", "torch", "commit", "timestamp"} <= set(run["machine"])


def test_flop_model_counts_streams():
    # S streams through the hidden layers, ×3 for forward + backward
    one = matmul_flops(1000, (64, 64), 0)
    assert matmul_flops(1000, (64, 64), 2) > 9 * one
