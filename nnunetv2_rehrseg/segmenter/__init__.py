"""Stage 2: the segmenter trained inside nnU-Net on the pseudo-HR data (plans block, preprocessing, pseudo-LR samples,
augmentation, loader, network with its HR head, losses, structural distillation from the self-SR encoder)."""
