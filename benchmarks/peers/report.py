"""The peers record: a text table and a plot of TRE against wall time, one panel per case."""
from __future__ import annotations

from pathlib import Path
from typing import List

from ..cases import Case


def label(row: dict) -> str:
    return f"{row['tool']} {row['profile']}" if row.get("profile") not in (None, "default") else row["tool"]


def format_table(rows: List[dict]) -> str:
    """A fixed-width table: case, tool, TRE before/after (mean, p95, max), folding, seconds, threads."""
    head = (f"{'case':12s} {'tool':24s} {'TRE0':>6s} {'mean':>6s} {'p95':>6s} {'max':>6s} {'Dice0':>6s} "
            f"{'Dice':>6s} {'fold':>7s} {'fold%':>8s} {'sec':>8s} {'cpu s':>8s} {'thr':>3s}")
    lines = [head, "-" * len(head)]
    num = (lambda d, k, fmt="6.2f": format(d[k], fmt) if d and k in d else f"{'—':>6s}")
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:12s} {label(r)[:24]:24s}  ERROR {r['error'][:70]}")
            continue
        f = r.get("folding") or {}
        t0, t, d0, d = r.get("tre_initial"), r.get("tre"), r.get("dice_initial"), r.get("dice")
        lines.append(f"{r['case']:12s} {label(r)[:24]:24s} {num(t0, 'mean')} {num(t, 'mean')} {num(t, 'p95')} "
                     f"{num(t, 'max')} {num(d0, 'mean', '6.3f')} {num(d, 'mean', '6.3f')} {f.get('count', -1):7d} "
                     f"{100 * f.get('fraction', float('nan')):7.3f}% {r['seconds']:8.1f} {r['cpu_seconds']:8.1f} "
                     f"{r['threads']:3d}")
    lines.append("TRE0: initial mean TRE; mean/p95/max: TRE after registration (mm); Dice0/Dice: mean label Dice "
                 "before/after (per structure in the record); fold: voxels with det J ≤ 0 inside the mask; sec: "
                 "wall time of the registration call; cpu s: its process CPU time.")
    return "\n".join(lines)


def plot(rows: List[dict], cases: List[Case], path: Path, title: str) -> None:
    """TRE (mean, with a bar up to p95) against registration wall time (log axis), one panel per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from idir_fast.core.metrics import tre

    ok = [r for r in rows if "error" not in r]
    n = max(len(cases), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    labels = sorted({label(r) for r in ok})
    markers = dict(zip(labels, "osD^v<>pPX*h" * 2))
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for ax, case in zip(axes[0], cases):
        by_dice = case.fixed_landmarks is None
        for r in (r for r in ok if r["case"] == case.name):
            lab = label(r)
            if by_dice:
                ax.plot([r["seconds"]], [1.0 - r["dice"]["mean"]], markers[lab], color=colours[lab], label=lab)
                continue
            ax.plot([r["seconds"]], [r["tre"]["mean"]], markers[lab], color=colours[lab], label=lab)
            ax.vlines(r["seconds"], r["tre"]["mean"], r["tre"]["p95"], color=colours[lab], lw=1)
        if not by_dice:
            ax.axhline(tre(case.fixed_landmarks, case.moving_landmarks)["mean"], ls="--", color="grey", lw=1,
                       label="initial")
        ax.set_ylabel("1 − mean Dice" if by_dice else "")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(case.name)
        ax.set_xlabel("registration wall time (s)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("TRE mean, bar to p95 (mm)")
    handles, names = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
