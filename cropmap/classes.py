"""The classes' names (no heavy imports: polygonize.py needs them without torch)."""

from __future__ import annotations

CLASS_NAMES = ("other", "tobacco", "corn", "coix")


def class_names(num_classes: int) -> list[str]:
    """Names of ``num_classes`` classes: :data:`CLASS_NAMES` for the competition's 4, else ``class0, class1, ...``."""
    return list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [f"class{i}" for i in range(num_classes)]
