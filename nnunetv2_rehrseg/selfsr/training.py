"""Self-SR training: plain phase (R1), then UASR fine-tuning (R4); Adam + OneCycle per phase, AMP on CUDA,
checkpoints every N iterations, exact resume (weights, optimiser, schedule, sampler and torch RNG state)."""
import json
import logging
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from nnunetv2_rehrseg.checkpoint import load_matching, load_safe, save_atomic
# the checkpoint names (the stage-1 folder's layout); re-exported for the modules that name them
from nnunetv2_rehrseg.layout import SELFSR_FINAL as FINAL, SELFSR_LATEST as LATEST, SELFSR_PLAIN as PLAIN  # noqa: F401
from nnunetv2_rehrseg.selfsr.config import SelfSRConfig
from nnunetv2_rehrseg.selfsr.losses import plain_sr_loss, thick_axis_consistency_loss, uasr_loss
from nnunetv2_rehrseg.selfsr.network import SelfSRNet
from nnunetv2_rehrseg.selfsr.pairs import PairSampler, SRCase

logger = logging.getLogger(__name__)



def build_network(config: SelfSRConfig, uasr: bool = True) -> SelfSRNet:
    return SelfSRNet(**config.network_kwargs(), uasr=uasr)


def load_network(path, device: torch.device = torch.device("cpu")):
    """(network in eval mode, config) from a saved self-SR checkpoint."""
    return network_from_checkpoint(load_safe(path), device)


def network_from_checkpoint(ckpt: dict, device: torch.device = torch.device("cpu")):
    """(network in eval mode, config) from the loaded content of a self-SR checkpoint."""
    config = SelfSRConfig.from_dict(ckpt["config"])
    net = build_network(config, uasr=ckpt["uasr"])
    net.load_state_dict(ckpt["network_weights"])
    return net.to(device).eval(), config


# the UASR phase fine-tunes a trained backbone (lower peak rate), while the uncertainty layer is a 17-parameter
# calibration of U that must move by several logits within that phase (higher rate)
UASR_LR_FACTOR, UNCERTAINTY_LR_FACTOR = 0.3, 30.0


def _optimizer(net: SelfSRNet, config: SelfSRConfig, uasr: bool):
    inactive = "plain_head." if uasr else "uasr_head."
    calibration = "uasr_head.uncertainty."
    params = [p for n, p in net.named_parameters() if not n.startswith((inactive, calibration))]
    max_lr = config.learning_rate * (UASR_LR_FACTOR if uasr else 1.0)
    groups, peaks = [{"params": params}], [max_lr]
    if uasr:
        groups.append({"params": list(net.uasr_head.uncertainty.parameters())})
        peaks.append(max_lr * UNCERTAINTY_LR_FACTOR)
    optimizer = torch.optim.Adam(groups, lr=config.learning_rate)
    steps = config.iterations - config.plain_iterations if uasr else config.plain_iterations
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=max(steps, 1))
    return optimizer, scheduler


@torch.no_grad()
def _plain_error_level(net: SelfSRNet, sampler: PairSampler, config: SelfSRConfig, device: torch.device) -> float:
    """Mean absolute image error of the plain model on one batch: the starting level of U."""
    net_input, image, _ = (t.to(device) for t in sampler.sample(config.batch_size))
    return float((net(net_input)["image"].float() - image).abs().mean())


def _thick_axis_l1(net: SelfSRNet, sampler: PairSampler, config: SelfSRConfig, device: torch.device,
                   use_amp: bool) -> torch.Tensor:
    """The thick-axis consistency term on a draw of real thick slices (half-size patches: the term needs
    2 side + 1 windows per draw)."""
    patch = max(net.divisor, config.patch // 2 // net.divisor * net.divisor)
    windows, thick_image = (t.to(device, non_blocking=True) for t in sampler.sample_thick(config.thick_axis_batch,
                                                                                           patch))
    with torch.autocast(device.type, enabled=use_amp):
        pred = net(windows.flatten(0, 1))
    return thick_axis_consistency_loss(pred, thick_image, config.r, config.fwhm, config.profile, sampler.thick_side)


def _weights_file(net: SelfSRNet, config: SelfSRConfig) -> dict:
    return {"network_weights": net.state_dict(), "config": config.to_dict(), "uasr": net.use_uasr}


def _training_settings(config: SelfSRConfig) -> dict:
    """What a resumed fit must share with the one it resumes: all but how the written labels are chosen."""
    return {k: v for k, v in config.to_dict().items() if k != "label_sources"}


def train_selfsr(cases: List[SRCase], config: SelfSRConfig, output_dir, device: torch.device,
                 init_checkpoint: Optional[str] = None,
                 on_iteration: Optional[Callable[[int, dict], None]] = None,
                 thick_cases: Optional[List[SRCase]] = None) -> Path:
    """Fit the self-SR on the pooled cases' in-plane pairs (and, for the thick-axis term, on `thick_cases`' real
    thick slices: by default all cases); resumes from output_dir/checkpoint_latest.pth when present.

    Returns the path of the final checkpoint (UASR head).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if (output_dir / FINAL).is_file():
        logger.info("self-SR already trained: %s", output_dir / FINAL)
        return output_dir / FINAL
    torch.manual_seed(config.seed)
    sampler = PairSampler(cases, config.r, config.fwhm, config.profile, config.num_classes, config.window,
                          config.patch, config.label_dropout, seed=config.seed, thick_cases=thick_cases)
    net = build_network(config, uasr=False).to(device)
    iteration, history = 0, []
    latest = output_dir / LATEST
    if latest.is_file():
        ckpt = load_safe(latest)
        if _training_settings(SelfSRConfig.from_dict(ckpt["config"])) != _training_settings(config):
            raise ValueError(f"{latest} was written with other self-SR settings; delete {output_dir} to start over")
        iteration, history = ckpt["iteration"], ckpt["history"]
        net.use_uasr = ckpt["uasr"]
        net.load_state_dict(ckpt["network_weights"])
        optimizer, scheduler = _optimizer(net, config, net.use_uasr)
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        sampler.set_state(ckpt["sampler_state"])
        torch.set_rng_state(ckpt["torch_rng_state"])
        logger.info("resuming self-SR at iteration %d of %d", iteration, config.iterations)
    else:
        if init_checkpoint:
            loaded, skipped = load_matching(net, init_checkpoint)
            logger.info("initialised %d tensors from %s; %d left at random: %s", len(loaded), init_checkpoint,
                        len(skipped), ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
        optimizer, scheduler = _optimizer(net, config, uasr=False)
    use_amp = device.type == "cuda"
    thick_axis = config.thick_axis_weight > 0 and bool(sampler.thick_cases)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    net.train()
    start, running = time.time(), {}
    progress = tqdm(total=config.iterations, initial=iteration, desc="self-SR", unit="it", mininterval=2)
    while iteration < config.iterations:
        if iteration == config.plain_iterations and not net.use_uasr:
            save_atomic(_weights_file(net, config), output_dir / PLAIN)
            net.uasr_head.init_from_plain(net.plain_head, _plain_error_level(net, sampler, config, device))
            net.use_uasr = True
            optimizer, scheduler = _optimizer(net, config, uasr=True)
        net_input, image, labels = (t.to(device, non_blocking=True) for t in sampler.sample(config.batch_size))
        with torch.autocast(device.type, enabled=use_amp):
            pred = net(net_input)
        losses = (uasr_loss if net.use_uasr else plain_sr_loss)(pred, image, labels, config.image_loss_weight)
        if thick_axis:
            losses["thick_l1"] = _thick_axis_l1(net, sampler, config, device, use_amp)
            losses["loss"] = losses["loss"] + config.thick_axis_weight * config.image_loss_weight * losses["thick_l1"]
        # every parameter, not only the optimiser's: the plain head's last gradients would otherwise stay through the
        # UASR phase and count in the clipping norm (a resumed run, which has none, would clip differently)
        net.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            optimizer.step()
        scheduler.step()
        iteration += 1
        for k, v in losses.items():
            running.setdefault(k, []).append(float(v.detach()))
        if iteration % 50 == 0 or iteration == config.iterations:
            history.append({"iteration": iteration, "phase": "uasr" if net.use_uasr else "plain",
                            **{k: float(np.mean(v)) for k, v in running.items()}})
            progress.set_postfix(loss=f"{history[-1]['loss']:.4f}", phase=history[-1]["phase"])
            running = {}
        progress.update(1)
        if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
            save_atomic({**_weights_file(net, config), "optimizer_state": optimizer.state_dict(),
                         "scheduler_state": scheduler.state_dict(), "sampler_state": sampler.state(),
                         "torch_rng_state": torch.get_rng_state(), "iteration": iteration, "history": history},
                        latest)
        if on_iteration is not None:
            on_iteration(iteration, losses)
    progress.close()
    save_atomic(_weights_file(net, config), output_dir / FINAL)
    (output_dir / "training_log.json").write_text(json.dumps(
        {"history": history, "seconds_this_run": time.time() - start}, indent=1))
    logger.info("self-SR trained in %.1f s", time.time() - start)
    return output_dir / FINAL
