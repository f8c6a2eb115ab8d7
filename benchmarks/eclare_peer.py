"""A published peer on the stage-1 benchmark's subject: ECLARE (Remedios et al., self-supervised SR of anisotropic MRI
from its own in-plane data; PyPI `eclare`, GPL-3). It is run through its own command line from a separate virtual
environment, never imported: it is not a dependency of the plugin.

    python3 -m venv ECLARE_VENV && ECLARE_VENV/bin/pip install eclare
    python benchmarks/eclare_peer.py -eclare ECLARE_VENV/bin/run-eclare -o DIR [-selfsr SELFSR_DIR]
                                     [-n_patches N] [-batch_size 128] [-anatomy mni152] [-subject template|noisy]

The same volume as `benchmarks/selfsr.py` (thick slices r=4 along z, Gaussian profile, FWHM = r HR voxels) is
written as a NIfTI with its true geometry (thick-slice centres where the profile puts them); ECLARE is told the
profile (Gaussian, relative thickness r), so its slice-profile estimation (ESPRESO) is skipped, as our self-SR is told
the profile too. Its output is placed on the HR grid by its affine (linear along z where its slices fall between ours)
and, since its affine may not state its own sampling phase, also at the best whole-slice shift against the truth (a
choice that favours it). PSNR/SSIM against the HR truth as in `benchmarks/selfsr.py`, beside cubic B-spline and, with
-selfsr (a `benchmarks/selfsr.py -o` folder of the same subject), our self-SR's scores from its JSON. ECLARE makes no
labels, so only the images are compared. -n_patches sets its training length (its default, 1,000,000 patches, is a GPU
budget); the report gives its wall time beside our self-SR's.
"""
import argparse
import json
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates, zoom

from selfsr import development_volume, image_scores

from nnunetv2_rehrseg.demo.anatomy import ANATOMIES

SHIFTS = range(-3, 4)


def lr_affine(spacing: float, r: int) -> np.ndarray:
    """nibabel affine (x, y, z order) of the thick slices: thick slice k covers HR slices rk..rk+r-1, so its centre
    lies (r - 1) / 2 HR slices above HR slice rk (HR slice 0 at the origin)."""
    affine = np.diag([spacing, spacing, spacing * r, 1.0])
    affine[2, 3] = (r - 1) / 2 * spacing
    return affine


def on_hr_grid(volume_xyz: np.ndarray, affine: np.ndarray, spacing: float, depth: int) -> np.ndarray:
    """A (x, y, z) volume with an axis-aligned affine -> (z, y, x) on the HR grid (slice j at z = j * spacing),
    linear along z, edge values beyond its slices."""
    z_positions = (np.arange(depth) * spacing - affine[2, 3]) / affine[2, 2]
    volume = np.transpose(volume_xyz, (2, 1, 0)).astype(np.float32)
    _, y, x = volume.shape
    grid = np.meshgrid(np.clip(z_positions, 0, volume.shape[0] - 1), np.arange(y), np.arange(x), indexing="ij")
    return map_coordinates(volume, grid, order=1, mode="nearest")


def shifted(volume: np.ndarray, shift: int) -> np.ndarray:
    """Slices moved by `shift` along z, edge slices repeated."""
    index = np.clip(np.arange(volume.shape[0]) - shift, 0, volume.shape[0] - 1)
    return volume[index]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-eclare", required=True, help="the run-eclare command of a separate environment")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-selfsr", default=None, help="a benchmarks/selfsr.py -o folder of the same subject")
    parser.add_argument("-n_patches", type=int, default=None, help="ECLARE's training patches (its default if unset)")
    parser.add_argument("-batch_size", type=int, default=128)
    parser.add_argument("-r", type=int, default=4)
    parser.add_argument("-anatomy", choices=sorted(ANATOMIES), default="mni152")
    parser.add_argument("-subject", choices=("template", "noisy"), default="template")
    parser.add_argument("-seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    r, spacing = args.r, ANATOMIES[args.anatomy].spacing_mm
    hr, _, lr, _, fwhm, _ = development_volume(args.anatomy, r, args.subject, args.seed)
    lr_file = out / "lr.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(lr, (2, 1, 0)).astype(np.float32), lr_affine(spacing, r)), str(lr_file))

    command = [args.eclare, "--in-fpath", str(lr_file), "--out-dir", str(out / "eclare"),
               "--relative-slice-thickness", f"{fwhm:g}", "--relative-slice-profile-type", "gaussian",
               "--batch-size", str(args.batch_size), "--gpu-id", "-1"]
    if args.n_patches:
        command += ["--n-patches", str(args.n_patches)]
    result_file = out / "eclare" / "lr_eclare.nii.gz"
    seconds = None
    if not result_file.is_file():        # resumable: an earlier run's output is scored again
        t = time.time()
        subprocess.run(command, check=True)
        seconds = time.time() - t
    output = nib.load(str(result_file))
    placed = on_hr_grid(np.asarray(output.dataobj), output.affine, spacing, hr.shape[0])

    results = {"cubic B-spline": image_scores(zoom(lr, (r, 1, 1), order=3, mode="reflect", grid_mode=True), hr),
               "ECLARE, placed by its affine": image_scores(placed, hr)}
    by_shift = {s: image_scores(shifted(placed, s), hr) for s in SHIFTS}
    best = max(by_shift, key=lambda s: by_shift[s]["psnr"])
    results[f"ECLARE, best whole-slice shift against the truth ({best:+d})"] = by_shift[best]
    if args.selfsr:
        ours = json.loads((Path(args.selfsr) / "selfsr_benchmark.json").read_text())
        for name in ("self-SR UASR, image+labels", "self-SR UASR, image only"):
            results[f"ours: {name}"] = {k: ours["results"][name][k] for k in ("psnr", "ssim")}
        written = [k for k in ours["results"] if k.startswith("self-SR UASR, image+labels, image as written")]
        if written:
            results["ours: self-SR UASR, image as written (back-projected)"] = {
                k: ours["results"][written[0]][k] for k in ("psnr", "ssim")}
        results["ours: training seconds"] = ours["train_seconds"]
    summary = {"results": results, "eclare_seconds": seconds, "command": command, "output_affine":
               output.affine.tolist(), "psnr_by_shift": {str(s): v["psnr"] for s, v in by_shift.items()}}
    (out / "eclare_peer.json").write_text(json.dumps(summary, indent=1))
    for name, scores in results.items():
        if isinstance(scores, dict):
            print(f"{name:70s} PSNR {scores['psnr']:6.2f} dB  SSIM {scores['ssim']:.4f}")
    print(f"ECLARE wall time: {seconds if seconds is not None else 'reused'} s; "
          f"ours: {results.get('ours: training seconds', 'n/a')} s of self-SR training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
