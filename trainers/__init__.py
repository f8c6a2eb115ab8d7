"""nnU-Net trainer classes of REHRSeg (installed as nnunetv2_rehrseg.trainers)."""
