"""Learning curves of the learned arms and the convergence rule of the benchmark protocol.

Every nnU-Net run logs, per epoch, its online validation Dice on patches of the validation fold (never the test
subjects): `mean_fg_dice` and its exponential moving average `ema_fg_dice`. An arm counts as converged when the EMA
changes by less than one Dice point over the last quarter of its steps.
"""
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

TOLERANCE = 0.01
LAST_FRACTION = 0.25


def change_over_last_part(curve: Sequence[float], fraction: float = LAST_FRACTION) -> float:
    """|value at the end - value where the last `fraction` of the curve starts|; NaN for fewer than two points."""
    values = np.asarray(curve, dtype=float)
    if len(values) < 2:
        return float("nan")
    start = min(len(values) - 2, int(np.floor((1 - fraction) * (len(values) - 1))))
    return float(abs(values[-1] - values[start]))


def is_converged(curve: Sequence[float], tolerance: float = TOLERANCE, fraction: float = LAST_FRACTION) -> bool:
    change = change_over_last_part(curve, fraction)
    return bool(np.isfinite(change) and change < tolerance)


def learning_curves(results_root: Path) -> Dict[str, dict]:
    """'<dataset>/<trainer>' -> steps at each epoch end, validation Dice and its EMA, convergence, and seconds per
    training step (median epoch wall time / iterations; the epoch's few validation iterations are included), from
    fold 0's checkpoint."""
    import torch

    from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import iterations_per_epoch

    curves = {}
    for checkpoint in sorted(Path(results_root).glob("*/*/fold_0/checkpoint_final.pth")):
        trainer_folder = checkpoint.parent.parent
        name = trainer_folder.name.split("__")[0]
        iterations = iterations_per_epoch(name)
        logged = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
        ema = [float(v) for v in logged["ema_fg_dice"]]
        epochs = np.subtract(logged["epoch_end_timestamps"], logged["epoch_start_timestamps"])
        curves[f"{trainer_folder.parent.name}/{name}"] = {"s_per_step": float(np.median(epochs)) / iterations,
            "steps": [iterations * (e + 1) for e in range(len(ema))], "dice": [float(v) for v in logged["mean_fg_dice"]],
            "ema": ema, "change": change_over_last_part(ema), "converged": is_converged(ema)}
    return curves


def plot_learning_curves(curves: Dict[str, dict], path: Path, names: Dict[str, str] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for key, curve in curves.items():
        label = (names or {}).get(key, key)
        status = "converged" if curve["converged"] else f"not converged (last quarter: {curve['change']:+.3f})"
        line, = ax.plot(curve["steps"], curve["ema"], label=f"{label}: {status}")
        ax.plot(curve["steps"], curve["dice"], ".", color=line.get_color(), alpha=0.4)
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation Dice")
    ax.set_title("fold 0's validation subject; dots: each epoch, lines: nnU-Net's EMA; converged: EMA moves < 0.01 "
                 "over the last quarter", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def convergence_rows(curves: Dict[str, dict]) -> Tuple[str, ...]:
    return tuple(f"| {key} | {curve['steps'][-1]} | {curve['ema'][-1]:.3f} | {curve['change']:.3f} | "
                 f"{'yes' if curve['converged'] else '**no**'} |" for key, curve in curves.items())
