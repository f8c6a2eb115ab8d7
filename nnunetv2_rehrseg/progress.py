"""A per-epoch picture of the REHRSeg loss terms, beside nnU-Net's progress.png."""
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_terms(logged: Dict[str, List[float]], keys: Sequence[str], path: Path) -> None:
    """One curve per loss term (log scale), with nnU-Net's validation loss and pseudo Dice (of the HR head)."""
    epochs = min(len(logged[k]) for k in keys)
    if epochs == 0:
        return
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(14, 5))
    for key in keys:
        ax_loss.plot(range(epochs), logged[key][:epochs], label=key.removeprefix("train_"))
    ax_loss.plot(range(len(logged["val_losses"])), logged["val_losses"], "k--", label="val (LR + HR)")
    ax_loss.set_yscale("symlog", linthresh=1e-3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss terms (training)")
    ax_loss.legend()
    ax_dice.plot(range(len(logged["mean_fg_dice"])), logged["mean_fg_dice"], "g:", label="HR pseudo Dice")
    ax_dice.plot(range(len(logged["ema_fg_dice"])), logged["ema_fg_dice"], "g-", label="moving average")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
