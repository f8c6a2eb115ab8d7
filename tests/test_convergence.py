"""The benchmark's convergence rule on synthetic learning curves, and the learning-curve picture."""
import numpy as np

from convergence import change_over_last_part, is_converged, plot_learning_curves


def test_plateau_converges_and_rising_curve_does_not():
    steps = np.arange(1, 41)
    plateau = 0.8 * (1 - np.exp(-steps / 5))                # flat over the last quarter
    rising = 0.8 * steps / steps[-1]                        # still climbing 0.2 over the last quarter
    assert is_converged(plateau) and change_over_last_part(plateau) < 0.01
    assert not is_converged(rising) and abs(change_over_last_part(rising) - 0.2) < 0.02
    assert not is_converged([0.5, 0.6]) and np.isnan(change_over_last_part([0.5, 0.6]))
    # noise around a plateau (as in our runs): the fitted line stays flat although single epochs jump by 0.01
    noisy = np.r_[np.linspace(0.2, 0.78, 12), 0.78 + 0.005 * np.array([1, -1, 1, -1, 1, -1, 1, -1, 1])]
    assert is_converged(noisy)
    # a plateau reached late (a class learned at 3/4 of the run): the jump lies inside the last quarter
    assert not is_converged(np.r_[np.full(15, 0.55), np.full(5, 0.77)])
    # a straight line: exactly its rise over the last quarter (3 of 12 steps of 0.1 from index 9 of 13)
    assert abs(change_over_last_part(np.linspace(0.0, 1.2, 13)) - 0.3) < 1e-9
    # nnU-Net's EMA of a curve that levelled off ten epochs before the end still moves (why the raw curve is used)
    ema = [0.4]
    for v in np.r_[np.full(10, 0.55), np.full(20, 0.77)][1:]:
        ema.append(0.9 * ema[-1] + 0.1 * v)
    assert is_converged(np.r_[np.full(10, 0.55), np.full(20, 0.77)]) and not is_converged(ema)


def test_learning_curve_picture_is_written(tmp_path):
    curves = {"Dataset700_X/REHRSegTrainer_1500steps": {"steps": [50, 100, 150, 200], "dice": [0.2, 0.5, 0.6, 0.62],
                                                   "ema": [0.2, 0.4, 0.55, 0.6], "change": 0.05, "converged": False}}
    plot_learning_curves(curves, tmp_path / "curves.png", {"Dataset700_X/REHRSegTrainer_1500steps": "(5) REHRSeg"})
    assert (tmp_path / "curves.png").stat().st_size > 10_000
