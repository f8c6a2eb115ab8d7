"""How nnU-Net finds the plugin's trainers: nnU-Net searches the folders listed in $nnUNet_extTrainer, and the
plugin ships one (nnunet_ext/) holding a shim module that imports its trainers."""
import os
from pathlib import Path

EXT_TRAINER_FOLDER = Path(__file__).resolve().parent / "nnunet_ext"


def with_plugin_trainers(ext_trainer: str) -> str:
    """An nnUNet_extTrainer value with our shim folder listed (other plugins' folders stay listed)."""
    folders = [f for f in (ext_trainer or "").split(os.pathsep) if f]
    if str(EXT_TRAINER_FOLDER) in folders:
        return os.pathsep.join(folders)
    return os.pathsep.join([str(EXT_TRAINER_FOLDER)] + folders)


def register_ext_trainers() -> None:
    """Add our shim folder to this process's nnUNet_extTrainer."""
    os.environ["nnUNet_extTrainer"] = with_plugin_trainers(os.environ.get("nnUNet_extTrainer", ""))
