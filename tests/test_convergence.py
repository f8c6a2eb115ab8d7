"""The benchmark's convergence rule on synthetic learning curves, and the learning-curve picture."""
import numpy as np

from nnunetv2_rehrseg.demo.convergence import change_over_last_part, is_converged, plot_learning_curves


def test_plateau_converges_and_rising_curve_does_not():
    steps = np.arange(1, 41)
    plateau = 0.8 * (1 - np.exp(-steps / 5))                # flat over the last quarter
    rising = 0.8 * steps / steps[-1]                        # still climbing 0.2 over the last quarter
    assert is_converged(plateau) and change_over_last_part(plateau) < 0.01
    assert not is_converged(rising) and abs(change_over_last_part(rising) - 0.2) < 0.02
    assert not is_converged([0.5]) and np.isnan(change_over_last_part([0.5]))
    # a curve that dips and recovers within the last quarter: the end against the start of that quarter
    assert is_converged([0.1, 0.5, 0.7, 0.7, 0.6, 0.705])
    assert abs(change_over_last_part([0.0, 0.2, 0.4, 0.6, 0.8]) - 0.2) < 1e-9     # from index 3 of 5


def test_learning_curve_picture_is_written(tmp_path):
    curves = {"Dataset700_X/REHRSegTrainer_1000steps": {"steps": [50, 100, 150, 200], "dice": [0.2, 0.5, 0.6, 0.62],
                                                   "ema": [0.2, 0.4, 0.55, 0.6], "change": 0.05, "converged": False}}
    plot_learning_curves(curves, tmp_path / "curves.png", {"Dataset700_X/REHRSegTrainer_1000steps": "(5) REHRSeg"})
    assert (tmp_path / "curves.png").stat().st_size > 10_000
