"""nnU-Net's fingerprint extraction, run on the pseudo-HR dataset of stage 1.

Stock nnU-Net writes nnUNet_preprocessed/<dataset>/dataset_fingerprint.json for the LR data; this one lands in
nnUNet_preprocessed/<dataset>/rehrseg/dataset_fingerprint.json, so the two never overwrite each other.
"""
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunetv2_rehrseg.layout import Stage1Folder


class PseudoHRFingerprintExtractor(DatasetFingerprintExtractor):
    def __init__(self, dataset_name_or_id, num_processes: int = 8, verbose: bool = False):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        stage1 = Stage1Folder.of(self.dataset_name)
        self.input_folder = str(stage1.pseudo_hr)
        self.dataset_json = load_json(str(stage1.pseudo_hr / "dataset.json"))
        self.dataset = get_filenames_of_train_images_and_targets(self.input_folder, self.dataset_json)
        # run() writes to nnUNet_preprocessed/<dataset_name>/dataset_fingerprint.json
        self.dataset_name = f"{self.dataset_name}/{stage1.root.name}"
