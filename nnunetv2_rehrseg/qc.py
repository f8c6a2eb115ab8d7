"""Quality checks that people would rather see than read: Dice tables and montages."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> Dict[int, float]:
    """Dice per label; 1.0 when the label is absent from both."""
    scores = {}
    for label in labels:
        p, r = pred == label, ref == label
        total = p.sum() + r.sum()
        scores[int(label)] = 1.0 if total == 0 else float(2 * np.logical_and(p, r).sum() / total)
    return scores


def save_montage(rows: List[Dict[str, np.ndarray]], row_names: List[str], path, title: Optional[str] = None,
                 label_max: Optional[int] = None, label_names: Optional[Dict[int, str]] = None) -> None:
    """One row per case, one column per named 2D panel; panels whose name contains 'label' use a label colormap
    (with a legend naming the classes when `label_names` is given), 'uncertainty' a heat map. Written atomically as
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # every panel any row has (a row may lack one: e.g. a case whose self-SR has no uncertainty head)
    columns = list(dict.fromkeys(column for row in rows for column in row))
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.6 * len(columns), 2.6 * len(rows)), squeeze=False)
    for i, (row, name) in enumerate(zip(rows, row_names)):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
            if column not in row:
                ax.set_frame_on(False)
                continue
            panel = row[column]
            if "label" in column:
                ax.imshow(panel, cmap="tab10", vmin=0, vmax=max(label_max or int(panel.max()), 1),
                          interpolation="nearest")
            elif "uncertainty" in column:
                ax.imshow(panel, cmap="magma", interpolation="nearest")
            else:
                ax.imshow(panel, cmap="gray", interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if label_names:
        from matplotlib.patches import Patch

        top = max(label_max or max(label_names), 1)
        cmap = plt.get_cmap("tab10")
        fig.legend(handles=[Patch(color=cmap(v / top), label=n) for v, n in sorted(label_names.items())],
                   loc="lower right", ncol=len(label_names), fontsize=8, frameon=False)
        fig.subplots_adjust(bottom=0.12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
