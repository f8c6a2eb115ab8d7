"""Stage 1's pseudo-HR labels of the training subjects scored against their HR truth, beside what interpolating the
same annotation gives (nearest and shape-based): the ceiling the HR head is trained toward."""
from pathlib import Path
from typing import Dict, Sequence

from nnunetv2_rehrseg.demo.pipeline import shape_based_to_hr, upsample_nearest, with_spread
from nnunetv2_rehrseg.evaluation import evaluate_folders, write_metrics
from nnunetv2_rehrseg.geometry import hr_grid
from nnunetv2_rehrseg.image_io import read_image, write_image


def score_pseudo_hr_labels(raw_folder: Path, pseudo_labels: Path, truth_labels: Path, ids: Sequence[str],
                           sitk_axis: int, r: int, out: Path) -> Dict[str, dict]:
    """{method: evaluate_folders summary (with spread)} for the stage-1 labels in `pseudo_labels` and the nearest and
    shape-based interpolation of the annotated LR labels (written to out/<method>/)."""
    for identifier in ids:
        lr_labels, lr = read_image(raw_folder / "labelsTr" / f"{identifier}.nii.gz")
        hr = hr_grid(lr, sitk_axis, r)
        write_image(upsample_nearest(lr_labels, sitk_axis, r), hr, out / "nearest" / f"{identifier}.nii.gz")
        write_image(shape_based_to_hr(lr_labels, lr, sitk_axis, r), hr, out / "shape_based" / f"{identifier}.nii.gz")
    scores = {}
    for method, folder in (("stage-1 pseudo-HR labels", Path(pseudo_labels)), ("nearest", out / "nearest"),
                           ("shape-based (3d)", out / "shape_based")):
        result = evaluate_folders(str(truth_labels), str(folder), chill=True)
        write_metrics(result, str(out / f"{method.split(' ')[0]}.json"))
        scores[method] = with_spread(result)
    return scores
