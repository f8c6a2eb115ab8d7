# nnU-Net imports every module of an nnUNet_extTrainer folder as a top-level module and drops it afterwards, so the
# classes are only re-exported here; they live (once) in nnunetv2_rehrseg.trainers.
from nnunetv2_rehrseg.trainers import *  # noqa: F401,F403
