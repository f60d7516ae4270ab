"""A run's curves: held-out rotation, translation and photometric errors by epoch."""

from __future__ import annotations

from pathlib import Path

from pix3d.fileio import save_figure


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("val_rotation_err_deg", "identity_rotation_err_deg", None, "rotation error (deg)"),
              ("val_translation_err_m", "identity_translation_err_m", None, "translation error (m)"),
              ("val_photometric_l1", "identity_photometric_l1", "true_motion_photometric_l1", "photometric L1")]
    for ax, (key, identity, true, ylabel) in zip(axes, panels):
        ax.plot(epochs, [m[key] for m in history], marker="o", label="prediction")
        ax.axhline(history[-1][identity], color="grey", ls="--", lw=1, label="identity motion")
        if true:
            ax.axhline(history[-1][true], color="green", ls=":", lw=1, label="true motion")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, close=True)

