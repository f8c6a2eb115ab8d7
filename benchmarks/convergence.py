"""Learning curves of the learned arms and the convergence rule of the benchmark protocol.

Every nnU-Net run logs, per epoch, its online validation Dice on patches of the validation fold (never the test
subjects): `mean_fg_dice` and its exponential moving average `ema_fg_dice`. An arm counts as converged when its
validation Dice changes by less than one point over the last quarter of its steps, the change read from a
least-squares line through the per-epoch values of that quarter (slope x its length): the line averages out the
noise of a few validation patches, and unlike nnU-Net's EMA (0.9 per epoch, a lag of about ten epochs) it does not
keep moving for ten epochs after the curve itself has levelled off; with 20-30 epochs per arm that lag alone would
fail every arm.
"""
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

TOLERANCE = 0.01
LAST_FRACTION = 0.25


def change_over_last_part(curve: Sequence[float], fraction: float = LAST_FRACTION) -> float:
    """|slope x length| of the least-squares line through the points of the curve's last `fraction` (at least three
    points; evenly spaced); NaN for fewer than three points."""
    values = np.asarray(curve, dtype=float)
    if len(values) < 3:
        return float("nan")
    start = min(len(values) - 3, int(np.floor((1 - fraction) * (len(values) - 1))))
    x = np.arange(start, len(values), dtype=float)
    slope = np.polyfit(x, values[start:], 1)[0]
    return float(abs(slope * (len(values) - 1 - start)))


def is_converged(curve: Sequence[float], tolerance: float = TOLERANCE, fraction: float = LAST_FRACTION) -> bool:
    change = change_over_last_part(curve, fraction)
    return bool(np.isfinite(change) and change < tolerance)


def learning_curves(results_root: Path) -> Dict[str, dict]:
    """'<dataset>/<trainer>' -> steps at each epoch end, validation Dice and its EMA, convergence, and seconds per
    training step (median epoch wall time / iterations; the epoch's few validation iterations are included), from
    fold 0's checkpoint."""
    from nnunetv2_rehrseg.checkpoint import load_trained_checkpoint
    from research_trainers import iterations_per_epoch

    curves = {}
    for checkpoint in sorted(Path(results_root).glob("*/*/fold_0/checkpoint_final.pth")):
        trainer_folder = checkpoint.parent.parent
        name = trainer_folder.name.split("__")[0]
        iterations = iterations_per_epoch(name)
        logged = load_trained_checkpoint(checkpoint)["logging"]
        ema = [float(v) for v in logged["ema_fg_dice"]]
        epochs = np.subtract(logged["epoch_end_timestamps"], logged["epoch_start_timestamps"])
        dice = [float(v) for v in logged["mean_fg_dice"]]
        curves[f"{trainer_folder.parent.name}/{name}"] = {"s_per_step": float(np.median(epochs)) / iterations,
            "steps": [iterations * (e + 1) for e in range(len(ema))], "dice": dice,
            "ema": ema, "change": change_over_last_part(dice), "converged": is_converged(dice)}
    return curves


def plot_learning_curves(curves: Dict[str, dict], path: Path, names: Dict[str, str] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for key, curve in curves.items():
        label = (names or {}).get(key, key)
        status = "converged" if curve["converged"] else f"not converged (last quarter: {curve['change']:+.3f})"
        line, = ax.plot(curve["steps"], curve["dice"], ".-", label=f"{label}: {status}")
        ax.plot(curve["steps"], curve["ema"], ":", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation Dice")
    ax.set_title("fold 0's validation subject; solid: each epoch, dotted: nnU-Net's EMA; converged: a line fitted to "
                 "the last quarter moves < 0.01 over it", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def convergence_rows(curves: Dict[str, dict]) -> Tuple[str, ...]:
    return tuple(f"| {key} | {curve['steps'][-1]} | {curve['dice'][-1]:.3f} | {curve['change']:.3f} | "
                 f"{'yes' if curve['converged'] else '**no**'} |" for key, curve in curves.items())
