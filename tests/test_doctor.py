"""`idir-fast doctor`: passes on this machine in quick mode; its GPU-acceptance mode runs on a CPU and says what
it skipped; a fast path with wrong numbers makes it fail."""
import json

from idir_fast import backends
from idir_fast.apps.cli import main


def test_doctor_quick_passes_here(capsys):
    assert main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    for section in ("environment", "fast paths against the reference", "capture safety", "step time"):
        assert section in out
    assert "torch ieee order 2" in out and "0 failure(s)" in out


def test_gpu_acceptance_on_a_cpu_runs_what_it_can_and_writes_the_report(tmp_path, capsys):
    assert main(["doctor", "--quick", "--gpu-acceptance", "--no-tests", "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("gpu_acceptance_*.json")).read_text())
    assert {"device_name", "torch", "commit", "timestamp"} <= set(report["machine"])
    rows = [r for rows in report["sections"].values() for r in rows]
    assert any(r["check"].startswith("fast loop == eager loop") and r["status"] == "ok" for r in rows)
    assert any(r["status"] == "skipped" and r.get("why") == "no GPU" for r in rows)
    assert next(tmp_path.glob("gpu_acceptance_*.md")).read_text().startswith("# idir-fast doctor --gpu-acceptance")


def test_doctor_fails_when_a_fast_path_is_wrong(monkeypatch, capsys):
    good = backends.BACKENDS["torch"]

    def wrong(params, omega, x, order, precision=None, workspace=None):
        d = good.derivatives(params, omega, x, order, precision, workspace=workspace)
        return d._replace(phi=d.phi * 1.001)

    monkeypatch.setitem(backends.BACKENDS, "torch", backends.Backend(
        "torch", good.summary, wrong, good.similarity, good.backward_passes, good.unavailable, True))
    monkeypatch.setenv("IDIR_FAST_SELF_CHECK", "0")  # the doctor must find it even without the run-time guard
    assert main(["doctor", "--quick"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_the_default_is_the_quick_doctor_and_an_installed_package_runs_without_a_checkout(tmp_path, monkeypatch):
    """No source checkout (as an installed package): the GPU acceptance skips the test suite and says why, and
    its report goes where ``--out`` says (``--quick`` is the default and still accepted)."""
    from idir_fast.apps import doctor as doctor_module

    monkeypatch.setattr(doctor_module, "checkout_tests", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "--gpu-acceptance"]) == 0
    report = json.loads(next(tmp_path.glob("gpu_acceptance_*.json")).read_text())
    rows = report["sections"]["test suite"]
    assert rows[0]["status"] == "skipped" and "--tests" in rows[0]["why"]
    step_rows = [r for r in report["sections"][next(k for k in report["sections"] if k.startswith("step time"))]]
    assert all(" 64 pts " in r["check"] for r in step_rows)  # the quick sizes
