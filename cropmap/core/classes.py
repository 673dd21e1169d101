"""The classes: their names, their preview colours and the label value that means "ignored / no data".

No heavy imports (polygonize.py needs them without torch).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("other", "tobacco", "corn", "coix")

#: The one value for "ignored / no data" inside the pipeline: label tiles and work strips hold 255 where
#: the source is not valid; the metric and the losses ignore it. (Maps on disk hold 0 there.)
IGNORE = 255

#: Default colours of the classes in previews and in a map's colour table (RGB): other, tobacco, corn,
#: coix, then two more for a fifth and sixth class.
PALETTE = np.array(
    [[0, 0, 0], [255, 200, 0], [0, 200, 0], [230, 30, 200], [0, 120, 255], [255, 60, 60]], np.uint8
)


def class_names(num_classes: int) -> list[str]:
    """Names of ``num_classes`` classes: :data:`CLASS_NAMES` for the competition's 4, else ``class0, class1, ...``."""
    return list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [f"class{i}" for i in range(num_classes)]
