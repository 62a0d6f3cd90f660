"""Figures are written as PNG from a saved run; `idir-fast report` finds the runs in a folder."""
import pytest

import idir_fast
from idir_fast import InputError
from idir_fast.apps.cli import main


def test_register_with_figures_and_report_command(tiny_pair, tmp_path, capsys):
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, epochs=10, batch_size=200,
                             hidden=(16, 16), progress=False, fixed_landmarks=tiny_pair.fixed_landmarks,
                             moving_landmarks=tiny_pair.moving_landmarks)
    out = reg.save(str(tmp_path / "run_"), figures=True, itk_transform=True)
    for kind in ("figure_tre", "figure_jacobian", "figure_loss", "transform"):
        assert out[kind].exists() and out[kind].stat().st_size > 1000, kind
    assert out["figure_tre"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for f in tmp_path.glob("run_fig_*.png"):
        f.unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("run_fig_*.png"))) == 3
    assert "fig_tre.png" in capsys.readouterr().out


def test_report_on_folder_without_runs(tmp_path):
    with pytest.raises(InputError, match="no \\*report.json"):
        from idir_fast.io.figures import report_run_dir

        report_run_dir(tmp_path)
