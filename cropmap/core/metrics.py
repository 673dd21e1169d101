"""Confusion-matrix IoU, the one metric of the project (training, prediction scoring, demo).

Contract: over all *counted* pixels of the whole image (label != 255 and not excluded by
a no-data mask), ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``;
``mIoU`` = mean IoU over the crop classes ``1..C-1`` (the headline number) and
``mIoU_all`` = mean IoU over ``0..C-1``.

Undefined classes: a class absent from both the labels and the predictions of the counted
pixels has ``TP + FP + FN = 0``; its IoU is reported as NaN and the means are taken over
the defined classes only (nanmean).  If no class of a mean is defined the mean is NaN.

Absent classes: a class with no pixel in the *labels* cannot be measured (its IoU is 0 when it is
predicted somewhere, NaN otherwise).  :meth:`ConfusionMatrix.compute` lists such classes under
``absent``, tables print ``absent`` instead of a number, and :func:`exclude_absent` (used in training
validation) leaves them out of the means, so a class missing from a validation set neither shows as NaN
nor as a 0 that looks like a failure to learn it.

The confusion matrix is ``int64 [C, C]``, rows = label, columns = prediction.  Counts are
accumulated on the device of the torch tensors passed to :meth:`ConfusionMatrix.update`
(``torch.bincount``), or on the CPU with ``np.bincount`` for numpy arrays, in chunks of at
most ``CHUNK`` pixels so full-size maps can be streamed without large temporaries.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cropmap.core.classes import CLASS_NAMES, class_names  # noqa: F401 - the names live there (no torch import)
from cropmap.core.classes import IGNORE

#: Maximum number of pixels processed at once by :meth:`ConfusionMatrix.update`.
CHUNK = 1 << 22


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def iou_from_confusion(confusion: np.ndarray | torch.Tensor) -> tuple[list[float], float, float]:
    """Per-class IoU, mIoU (classes 1..C-1) and mIoU_all (0..C-1) from a ``[C, C]`` count matrix.

    Rows are labels, columns predictions.  Undefined classes (TP + FP + FN = 0) are NaN and
    left out of the means.
    """
    m = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.float64)
    tp = np.diag(m)
    denom = m.sum(axis=0) + m.sum(axis=1) - tp  # TP + FP + FN
    iou = [float(tp[c] / denom[c]) if denom[c] > 0 else float("nan") for c in range(m.shape[0])]
    return iou, _nanmean(iou[1:]), _nanmean(iou)


def absent_classes(confusion: np.ndarray | torch.Tensor) -> list[int]:
    """Classes with no pixel in the labels (row sum 0) of a ``[C, C]`` confusion matrix."""
    m = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion)
    return [int(c) for c in np.flatnonzero(m.sum(axis=1) == 0)]


def exclude_absent(metrics: dict) -> dict:
    """Metrics of :meth:`ConfusionMatrix.compute` with absent classes left out of the means.

    Returns a copy whose ``iou`` is NaN for the classes in ``metrics["absent"]`` (not measurable) and
    whose ``mIoU`` / ``mIoU_all`` are the means over the other classes.
    """
    out = dict(metrics)
    absent = set(metrics.get("absent", []))
    out["iou"] = [float("nan") if c in absent else v for c, v in enumerate(metrics["iou"])]
    out["mIoU"] = _nanmean(out["iou"][1:])
    out["mIoU_all"] = _nanmean(out["iou"])
    return out


def format_iou(value: float, absent: bool = False, digits: int = 4) -> str:
    """An IoU for a table: ``absent`` for a class missing from the labels, ``n/a`` for NaN, else the number."""
    if absent:
        return "absent"
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


class ConfusionMatrix:
    """Accumulates a ``[C, C]`` int64 confusion matrix (rows = label, cols = prediction).

    Args:
        num_classes: number of classes C (>= 2).
        device: device of the accumulator.  ``None``: the device of the first torch update
            (CPU until then, and for numpy updates).
        ignore_index: label value that is never counted (255).
    """

    def __init__(self, num_classes: int = 4, device: torch.device | str | None = None, ignore_index: int = IGNORE) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device or "cpu")
        self._updated = False

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Zero the counts (the device is kept)."""
        self.matrix.zero_()

    def update(self, pred, target, valid=None) -> None:
        """Count one batch / map.

        Args:
            pred: integer predictions in ``0..C-1``, torch tensor or numpy array of any shape.
                Only counted pixels are checked, so a prediction map may carry its own
                no-data code where the label is 255 or ``valid`` is False.
            target: integer labels of the same shape, ``0..C-1`` or ``ignore_index``.
            valid: optional boolean mask of the same shape; False pixels are not counted.

        If any argument is a torch tensor the counting runs with torch on that tensor's
        device (others are converted); otherwise with numpy on the CPU.

        Raises:
            ValueError: shape mismatch, non-integer inputs, a label outside
                ``0..C-1``/``ignore_index``, or a counted prediction outside ``0..C-1``.
        """
        tensors = [a for a in (pred, target, valid) if isinstance(a, torch.Tensor)]
        if tensors:
            device = tensors[0].device
            pred, target = (torch.as_tensor(a, device=device) for a in (pred, target))
            valid = None if valid is None else torch.as_tensor(valid, device=device)
            counts = self._count(pred, target, valid, torch_path=True)
            if not self._device_fixed and not self._updated:
                self.matrix = self.matrix.to(device)
        else:
            pred, target = np.asarray(pred), np.asarray(target)
            valid = None if valid is None else np.asarray(valid)
            counts = torch.from_numpy(self._count(pred, target, valid, torch_path=False))
        self.matrix += counts.to(self.matrix.device)
        self._updated = True

    def _count(self, pred, target, valid, torch_path: bool):
        """Confusion counts ``[C, C]`` (torch int64 on pred's device, or numpy int64) of one input."""
        if pred.shape != target.shape or (valid is not None and valid.shape != target.shape):
            shapes = [tuple(pred.shape), tuple(target.shape)] + ([] if valid is None else [tuple(valid.shape)])
            raise ValueError(f"pred, target (and valid) must have the same shape, got {shapes}")
        is_int = (lambda a: not a.is_floating_point() and not a.is_complex() and a.dtype != torch.bool) if torch_path else (
            lambda a: np.issubdtype(a.dtype, np.integer)
        )
        if not (is_int(pred) and is_int(target)):
            raise ValueError(f"pred and target must be integer arrays, got {pred.dtype} and {target.dtype}")
        c = self.num_classes
        lib = torch if torch_path else np
        flat_p, flat_t = pred.reshape(-1), target.reshape(-1)
        flat_v = None if valid is None else valid.reshape(-1)
        if torch_path:
            total = torch.zeros(c * c + 1, dtype=torch.int64, device=pred.device)
        else:
            total = np.zeros(c * c + 1, dtype=np.int64)
        for start in range(0, flat_t.shape[0], CHUNK):
            p = flat_p[start : start + CHUNK]
            t = flat_t[start : start + CHUNK]
            p = p.long() if torch_path else p.astype(np.int64)
            t = t.long() if torch_path else t.astype(np.int64)
            ignored = t == self.ignore_index
            bad_label = ~ignored & ((t < 0) | (t >= c))
            if bad_label.any():
                value = int(t[bad_label][0])
                raise ValueError(f"label value {value} is outside 0..{c - 1} and is not the ignore value {self.ignore_index}")
            counted = ~ignored
            if flat_v is not None:
                v = flat_v[start : start + CHUNK]
                counted = counted & (v.bool() if torch_path else v.astype(bool))
            bad_pred = counted & ((p < 0) | (p >= c))
            if bad_pred.any():
                value = int(p[bad_pred][0])
                raise ValueError(f"prediction value {value} is outside 0..{c - 1} at a counted pixel")
            # Uncounted pixels go to the extra bin c*c, dropped below.
            index = lib.where(counted, t * c + p, c * c)
            if torch_path:
                total += torch.bincount(index, minlength=c * c + 1)
            else:
                total += np.bincount(index, minlength=c * c + 1)
        return total[: c * c].reshape(c, c)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add the counts of ``other`` (same number of classes) into this matrix; returns self."""
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise ValueError("can only merge a ConfusionMatrix with the same num_classes")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.merge(other)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over all processes when ``torch.distributed`` is initialised (no-op otherwise).

        The matrix must live on a device the process group's backend supports (CUDA for NCCL).
        Returns self.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)
        return self

    # ------------------------------------------------------------------ results
    def compute(self) -> dict:
        """Metrics of the counts so far.

        Returns:
            ``{"iou": [float] * C (NaN for undefined classes), "mIoU": float (nanmean over
            1..C-1), "mIoU_all": float (nanmean over 0..C-1), "pixel_acc": float (fraction of
            counted pixels predicted correctly, NaN if none), "confusion": [[int]] (rows =
            label, cols = prediction), "absent": [int] (classes with no label pixel)}``.
        """
        confusion = self.matrix.cpu().numpy()
        iou, miou, miou_all = iou_from_confusion(confusion)
        total = int(confusion.sum())
        pixel_acc = float(np.trace(confusion) / total) if total else float("nan")
        return {
            "iou": iou,
            "mIoU": miou,
            "mIoU_all": miou_all,
            "pixel_acc": pixel_acc,
            "confusion": confusion.tolist(),
            "absent": absent_classes(confusion),
        }

    def table(self, names: list[str] | tuple[str, ...] | None = None) -> str:
        """Per-class IoU table with pixel counts, then the ``mIoU`` and ``mIoU_all`` lines.

        ``names`` defaults to :func:`class_names`.
        Undefined IoUs print as ``n/a``; classes with no label pixel as ``absent`` (see the module notes).
        """
        c = self.num_classes
        if names is None:
            names = class_names(c)
        if len(names) != c:
            raise ValueError(f"need {c} class names, got {len(names)}")
        result = self.compute()
        confusion = np.asarray(result["confusion"])

        absent = set(result["absent"])
        fmt = format_iou

        summary = (f"mIoU (1..{c - 1})", f"mIoU_all (0..{c - 1})")
        width = max(len(label) for label in (*summary, *(f"{i} {n}" for i, n in enumerate(names))))
        lines = [f"{'class':<{width}} {'IoU':>8} {'label px':>14} {'pred px':>14}"]
        for i, name in enumerate(names):
            lines.append(
                f"{f'{i} {name}':<{width}} {fmt(result['iou'][i], i in absent):>8} {int(confusion[i].sum()):>14} {int(confusion[:, i].sum()):>14}"
            )
        lines.append(f"{summary[0]:<{width}} {fmt(result['mIoU']):>8}")
        lines.append(f"{summary[1]:<{width}} {fmt(result['mIoU_all']):>8}")
        if absent:
            listed = ", ".join(names[k] for k in sorted(absent))
            lines.append(f"absent: {listed} (no pixel in the labels: IoU not measurable)")
        return "\n".join(lines)
