"""Where REHRSeg keeps a dataset's stage-1 results: the one home of the on-disk layout that stage 1 writes and
planning, training, validation and inference read.

nnUNet_preprocessed/<dataset>/rehrseg/
  settings.json            the geometry: the dataset's r, thick axis, thickness, profile, and each case's own (written
                           first; a rerun must match it)
  selfsr/                  self-SR checkpoints (latest, plain, final) and training log; video_prior.pth (the frame
                           interpolator fine-tuned on the dataset, with -video_prior)
  selfsr_r<R>/             the self-SR of the cases acquired at another r than the dataset's (one folder per r)
  pseudo_hr/               dataset.json, imagesTr/<id>_000C.nii.gz, labelsTr/<id>.nii.gz, uncertaintyTr/<id>.nii.gz,
                           probabilitiesTr/<id>_000K.nii.gz (the class probabilities of label value K, uint8 levels)
  lr_images/               copies of the LR training images (<id>_000C + the dataset's file ending), written with the
                           preprocessed data: final validation reads them without nnUNet_raw
  dataset_fingerprint.json nnU-Net's fingerprint of the pseudo-HR data
  qc/                      lr_dice.json, cases/<id>.json (one per finished case), montage.png,
                           label_sources.json (each label's source, decided before the first case is written)
  summary.json             written last: stage 1 is complete
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from nnunetv2_rehrseg.errors import InputError

SELFSR_LATEST, SELFSR_PLAIN, SELFSR_FINAL = "checkpoint_latest.pth", "checkpoint_plain.pth", "checkpoint_final.pth"
PSEUDO_HR_ENDING = ".nii.gz"   # stage 1's own data; the user's format is kept for everything users read


@dataclass(frozen=True)
class Stage1Folder:
    root: Path

    @classmethod
    def of(cls, dataset_name: str) -> "Stage1Folder":
        from nnunetv2.paths import nnUNet_preprocessed

        if not nnUNet_preprocessed.is_set():
            raise InputError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
        return cls(Path(str(nnUNet_preprocessed)) / dataset_name / "rehrseg")

    @property
    def settings(self) -> Path:
        return self.root / "settings.json"

    @property
    def selfsr(self) -> Path:
        return self.root / "selfsr"

    def selfsr_of_ratio(self, r: int) -> Path:
        """Checkpoints of the self-SR for the cases of another slice spacing than the dataset's (r thin per thick)."""
        return self.root / f"selfsr_r{r}"

    @property
    def selfsr_final(self) -> Path:
        return self.selfsr / SELFSR_FINAL

    @property
    def video_prior(self) -> Path:
        return self.selfsr / "video_prior.pth"

    @property
    def pseudo_hr(self) -> Path:
        return self.root / "pseudo_hr"

    @property
    def pseudo_hr_labels(self) -> Path:
        return self.pseudo_hr / "labelsTr"

    def pseudo_hr_case(self, identifier: str, num_channels: int) -> Dict[str, object]:
        """The pseudo-HR files of one case: {"images": [...], "label": ..., "uncertainty": ...}."""
        return {"images": [self.pseudo_hr / "imagesTr" / f"{identifier}_{c:04d}{PSEUDO_HR_ENDING}"
                           for c in range(num_channels)],
                "label": self.pseudo_hr_labels / f"{identifier}{PSEUDO_HR_ENDING}",
                "uncertainty": self.pseudo_hr / "uncertaintyTr" / f"{identifier}{PSEUDO_HR_ENDING}"}

    def pseudo_hr_probabilities(self, identifier: str, num_values: int) -> List[Path]:
        """The class probabilities of one case's pseudo-HR labels, one file per label value 0..num_values-1
        (class_probabilities: uint8 levels), the soft pseudo-HR targets."""
        return [self.pseudo_hr / "probabilitiesTr" / f"{identifier}_{k:04d}{PSEUDO_HR_ENDING}"
                for k in range(num_values)]

    @property
    def lr_images(self) -> Path:
        return self.root / "lr_images"

    def case_qc(self, identifier: str) -> Path:
        """A case's QC record, written after its pseudo-HR files: its presence marks the case done."""
        return self.qc / "cases" / f"{identifier}.json"

    @property
    def fingerprint(self) -> Path:
        return self.root / "dataset_fingerprint.json"

    @property
    def qc(self) -> Path:
        return self.root / "qc"

    @property
    def label_sources(self) -> Path:
        return self.qc / "label_sources.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def lr_images_of(self, dataset_json: dict) -> Dict[str, List[str]]:
        """The training cases' LR image files {id: [channel files]}: the copies kept here, else (stage-1 folders
        written before the copies existed) the raw dataset's own."""
        from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

        from nnunetv2_rehrseg.raw_dataset import open_raw_dataset

        ending = dataset_json["file_ending"]
        if self.lr_images.is_dir():
            lists = create_lists_from_splitted_dataset_folder(str(self.lr_images), ending)
            return {os.path.basename(files[0])[:-len(ending) - 5]: files for files in lists}
        return {key: [str(f) for f in case.images] for key, case in open_raw_dataset(self.root.parent.name).cases.items()}
