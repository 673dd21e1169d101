"""A training run's log: one row per epoch, written as ``log.csv`` and drawn as ``curves.png``.

Both live in the run's folder (:func:`cropmap.core.layout.run_name` under the model folder) and are rewritten
whole after every epoch, atomically, so they always describe the epochs that a checkpoint holds.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cropmap.core.files import atomic_path
from cropmap.core.metrics import class_names

NAN = float("nan")


def epoch_row(epoch: int, stats: dict, metrics: dict, lrs: list[float], num_classes: int, seconds: float) -> dict:
    """The log row of ``epoch`` (1-based).

    Args:
        stats: ``train_loss`` and ``train_images_per_s`` of the epoch.
        metrics: validation metrics (``iou`` list, ``mIoU``, ``mIoU_all``, ``val_loss``), ``{}`` when the
            epoch was not validated (its cells are NaN).
        lrs: learning rates of the backbone and the head at the end of the epoch.
    """
    row = {"epoch": epoch, "train_loss": stats["train_loss"], "val_loss": metrics.get("val_loss", NAN),
           "lr": lrs[0], "lr_head": lrs[-1]}
    absent = set(metrics.get("absent", []))
    for k, name in enumerate(class_names(num_classes)):
        row[f"iou_{name}"] = ("absent" if k in absent else metrics["iou"][k]) if metrics else NAN
    row["mIoU"] = metrics.get("mIoU", NAN)
    row["mIoU_all"] = metrics.get("mIoU_all", NAN)
    row["train_images_per_s"] = stats["train_images_per_s"]
    row["seconds"] = seconds
    return row


def write_logs(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """``{run_dir}/log.csv`` and ``{run_dir}/curves.png`` from the rows of every epoch so far."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_log_csv(run_dir / "log.csv", history)
    plot_curves(run_dir / "curves.png", history)


def write_log_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch (the keys of the first row are the columns); written atomically."""
    if not history:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        for r in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot_curves(path: Path, history: list[dict]) -> None:
    """Loss, IoU and learning-rate curves per epoch as a PNG (matplotlib's Agg canvas, no display)."""
    if not history:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    ax_loss, ax_iou, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set_title("loss")
    for key in [k for k in history[0] if k.startswith("iou_")]:
        values = [r[key] if isinstance(r[key], float) else NAN for r in history]  # "absent": a gap
        ax_iou.plot(epochs, values, ".-", alpha=0.7, label=key[4:])
    ax_iou.plot(epochs, [r["mIoU"] for r in history], "o-", color="k", lw=2, label="mIoU (crops)")
    ax_iou.set_ylim(0, 1)
    ax_iou.set_title("validation IoU")
    ax_lr.plot(epochs, [r["lr"] for r in history], "o-", label="backbone")
    ax_lr.plot(epochs, [r["lr_head"] for r in history], "--", label="head")
    ax_lr.set_title("learning rate (end of epoch)")
    for ax in (ax_loss, ax_iou, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
