"""rehrseg_train (nnUNetv2_train with REHRSeg's trainers found) and rehrseg_env (the export line)."""
import sys

from nnunetv2_rehrseg.trainer_registration import EXT_TRAINER_FOLDER, register_ext_trainers

DEFAULTS = {"-tr": "REHRSegTrainer", "-p": "REHRSegPlans"}


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
