"""rehrseg_train (nnUNetv2_train with REHRSeg's trainers found) and rehrseg_env (the export line)."""
import os
import sys
from pathlib import Path

EXT_TRAINER_FOLDER = Path(__file__).resolve().parent.parent / "nnunet_ext"
DEFAULTS = {"-tr": "REHRSegTrainer", "-p": "REHRSegPlans"}


def with_plugin_trainers(ext_trainer: str) -> str:
    """An nnUNet_extTrainer value with our shim folder listed (other plugins' folders stay listed)."""
    folders = [f for f in (ext_trainer or "").split(os.pathsep) if f]
    if str(EXT_TRAINER_FOLDER) in folders:
        return os.pathsep.join(folders)
    return os.pathsep.join([str(EXT_TRAINER_FOLDER)] + folders)


def register_ext_trainers() -> None:
    """Add our shim folder to this process's nnUNet_extTrainer."""
    os.environ["nnUNet_extTrainer"] = with_plugin_trainers(os.environ.get("nnUNet_extTrainer", ""))


def train_entry(argv=None) -> None:
    """Forwards every nnUNetv2_train flag; -tr defaults to REHRSegTrainer and -p to REHRSegPlans."""
    from nnunetv2.run.run_training import run_training_entry

    args = list(sys.argv[1:] if argv is None else argv)
    for flag, value in DEFAULTS.items():
        if flag not in args and "-h" not in args and "--help" not in args:
            args += [flag, value]
    register_ext_trainers()
    sys.argv = ["rehrseg_train"] + args
    run_training_entry()


def env_entry(argv=None) -> None:
    print(f"export nnUNet_extTrainer={EXT_TRAINER_FOLDER}")
