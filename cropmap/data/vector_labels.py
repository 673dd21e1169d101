"""Field polygons as labels: a polygon layer with a crop attribute burnt onto an image's grid, in strips.

The flags (:func:`add_label_args`, :class:`LabelOptions`): ``--labels FILE [--label_layer L] --label_field F
[--class_names a,b,c] [--unlabelled ignore|background]``. The attribute holds class ids (integers
``0..num_classes-1``) or, with ``--class_names``, names (a name's position in the list is its id); a value
that is neither is refused with one line listing the values found.

Burning (:func:`burn_labels`): the polygons are reprojected to the image's CRS and burnt at pixel centres,
strip by strip, only those whose bounds touch the strip (:class:`~cropmap.raster.vectors.GridFeatures`).
Where polygons of different classes overlap the pixel is 255 (ignored) and counted; pixels in no polygon are
255 (``unlabelled="ignore"``, a sparse survey) or class 0 (``"background"``). Memory: a few strips.

:func:`rasterize_to` writes an image's label as a GeoTIFF (COG) on its grid: nodata 255, the class colour
table. :func:`rasterized_labels` does it for every source of a tiling run, into a temporary folder deleted
when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cropmap.core.cli import progress as progress_bar, warn
from cropmap.core.errors import InputError
from cropmap.core.files import check_output_file, temporary_dir
from cropmap.core.layout import label_path
from cropmap.raster import IGNORE, check_image, open_writer, raster_info, strip_rows
from cropmap.raster.vectors import GridFeatures, Layer, read_layer, require_crs, strips, value_texts

#: ``--unlabelled`` choices: what pixels in no polygon become.
UNLABELLED = ("ignore", "background")
#: What needs a CRS (the line a PNG or CRS-less source gets).
NEED = "vector labels (--labels)"
#: Distinct values shown in an error message.
SHOWN = 20


def name_list(text: str) -> list[str]:
    """``"other, tobacco,corn"`` -> ``["other", "tobacco", "corn"]``; an ``argparse`` type."""
    return [t.strip() for t in str(text).split(",")]


def add_label_args(p, required: bool = False) -> None:
    """The vector-label flags (``--labels`` is required when ``required``)."""
    p.add_argument("--labels", required=required, default=None,
                   help="field polygons with a crop attribute (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, ...), "
                        "reprojected and burnt onto each GeoTIFF image's grid at pixel centres " +
                        ("(required)" if required else "instead of reading NAME_label.tif beside each image "
                                                       "(default: none, raster labels)"))
    p.add_argument("--label_layer", default=None, help="layer of --labels to read (default: the first)")
    p.add_argument("--label_field", default=None,
                   help="attribute of the polygons holding the class: integer ids 0..num_classes-1, or names "
                        "with --class_names (required with --labels)")
    p.add_argument("--class_names", type=name_list, default=None,
                   help="comma-separated class names in id order, e.g. other,tobacco,corn,coix: --label_field "
                        "holds names, a name's position is its id; sets --num_classes (default: none, ids)")
    p.add_argument("--unlabelled", choices=UNLABELLED, default="ignore",
                   help="pixels in no polygon: ignore (255, not trained on or scored: a sparse survey) or "
                        "background (class 0) (default: %(default)s)")


def check_class_names(names: Sequence[str] | None, num_classes: int | None) -> int:
    """The number of classes that ``--class_names`` and ``--num_classes`` give (either may be None: 4 when
    both are); :class:`InputError` for fewer than 2, empty or repeated names, or a count that differs."""
    if names is None:
        return num_classes or 4
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise InputError(f"--class_names: expected at least 2 distinct, non-empty names, got {','.join(names)!r}")
    if num_classes is not None and num_classes != len(names):
        raise InputError(f"--num_classes {num_classes} differs from the {len(names)} --class_names")
    return len(names)


@dataclass(frozen=True)
class LabelOptions:
    """Where the label polygons are and how their attribute becomes a class id (see the module docstring).

    ``num_classes``: ids are ``0..num_classes-1``; None: the number of ``class_names``, else 4. Checked on
    creation (:class:`InputError` naming the flag).
    """

    labels: str | os.PathLike
    field: str
    layer: str | None = None
    class_names: tuple[str, ...] | None = None
    unlabelled: str = "ignore"
    num_classes: int | None = None

    def __post_init__(self):
        if not self.field:
            raise InputError("--label_field: give the attribute of --labels that holds the class")
        if self.unlabelled not in UNLABELLED:
            raise InputError(f"--unlabelled: expected one of {', '.join(UNLABELLED)}, got {self.unlabelled!r}")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        check_class_names(self.class_names, self.num_classes)
        if not 2 <= self.classes <= 255:
            raise InputError(f"--num_classes: expected 2 to 255 classes, got {self.classes}")

    @property
    def classes(self) -> int:
        """The number of classes: ``num_classes``, else the number of ``class_names``, else 4."""
        if self.num_classes is not None:
            return self.num_classes
        return len(self.class_names) if self.class_names else 4


def label_options(args, num_classes: int | None = None) -> LabelOptions | None:
    """The :class:`LabelOptions` of parsed flags (None without ``--labels``); ``num_classes``: ``--num_classes``
    when the script has it (None: not given). The label flags without ``--labels`` are refused."""
    if args.labels is None:
        given = [f"--{k}" for k in ("label_layer", "label_field", "class_names") if getattr(args, k) is not None]
        if given:
            raise InputError(f"{given[0]} needs --labels")
        return None
    if args.label_field is None:
        raise InputError("--labels needs --label_field (the attribute holding the class)")
    return LabelOptions(args.labels, args.label_field, args.label_layer, args.class_names, args.unlabelled,
                        num_classes)


def _found(keys: Sequence[str | None]) -> str:
    shown = sorted("(null)" if k is None else k for k in keys)
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    return ", ".join(shown[:SHOWN]) + more


def class_ids(layer: Layer, options: LabelOptions) -> np.ndarray:
    """The class id of each feature of ``layer``: ``uint8 [n]`` (see the module docstring).

    :class:`InputError` naming the file and field, with the values found, for a null, an unknown name, a
    value that is not an integer id (without ``class_names``) or an id outside ``0..classes-1``.
    """
    where = f"--labels {layer.path}, field {layer.field!r}"
    texts = value_texts(layer.values)
    uniq = list(dict.fromkeys(texts))
    if options.class_names:
        ids = {name: i for i, name in enumerate(options.class_names)}
        bad = [k for k in uniq if k not in ids]
        if bad:
            raise InputError(f"{where}: values not in --class_names ({','.join(options.class_names)}): "
                             f"{_found(bad)} (values found: {_found(uniq)})")
    else:
        ids = {}
        for k in uniq:
            if k is not None and k.lstrip("-").isdigit():
                ids[k] = int(k)
        bad = [k for k in uniq if k not in ids]
        if bad:
            raise InputError(f"{where}: values that are not class ids: {_found(bad)} (values found: {_found(uniq)}; "
                             "give --class_names to map names to ids)")
        bad = [k for k in uniq if not 0 <= ids[k] < options.classes]
        if bad:
            raise InputError(f"{where}: class ids outside 0..{options.classes - 1}: {_found(bad)} "
                             f"(values found: {_found(uniq)})")
    lookup = np.array([ids[k] for k in uniq], np.uint8)
    index = {k: i for i, k in enumerate(uniq)}
    return lookup[np.fromiter((index[t] for t in texts), np.int64, len(texts))]


@dataclass
class VectorLabels:
    """The label polygons read once (:meth:`read`), burnt onto any number of images."""

    options: LabelOptions
    layer: Layer
    classes: np.ndarray  # uint8 [n]: the class id of each feature of ``layer``

    @classmethod
    def read(cls, options: LabelOptions) -> VectorLabels:
        layer = read_layer(options.labels, options.field, options.layer, what="--labels")
        return cls(options, layer, class_ids(layer, options))


def burn_labels(grid: GridFeatures, classes: np.ndarray, y0: int, h: int,
                background: bool = False) -> tuple[np.ndarray, int]:
    """The label of rows ``y0 .. y0 + h`` of ``grid``'s raster.

    ``classes``: ``uint8 [n]``, the class of each feature of ``grid``. Returns ``(label, overlaps)``:
    ``uint8 [h, W]`` (the class of the polygons whose inside holds the pixel centre; 255 where polygons of
    different classes do, and where none does unless ``background``, then 0) and the number of pixels of
    the first kind. Each class is burnt once, from the features whose bounds touch the strip.
    """
    shape = (h, grid.width)
    idx = grid.touching(y0, h)
    label = np.full(shape, IGNORE, np.uint8)
    conflict = np.zeros(shape, bool)
    mask = np.empty(shape, np.uint8)
    cls = classes[idx]
    for c in np.unique(cls):
        mask.fill(0)
        grid.burn(idx[cls == c], 1, mask, y0)
        inside = mask.view(bool)
        conflict |= inside & (label != IGNORE)
        label[inside] = c
    label[conflict] = IGNORE
    if background:
        label[(label == IGNORE) & ~conflict] = 0
    return label, int(np.count_nonzero(conflict))


def rasterize_to(image: str | os.PathLike, labels: LabelOptions | VectorLabels,
                 output: str | os.PathLike | None = None, *, rows: int | None = None, progress: bool = False,
                 log=print) -> dict:
    """Write the label of ``image`` (a georeferenced GeoTIFF) burnt from ``labels`` to ``output``.

    Args:
        image: the source whose grid (CRS, transform, size) the label takes; its pixels are not read.
        labels: the options (the file is read) or polygons already read (:meth:`VectorLabels.read`).
        output: a ``.tif`` (default: ``NAME_label.tif`` beside ``image``), written as a COG: ``uint8 [H, W]``,
            classes ``0..classes-1``, 255 ignored (the nodata value), the class colour table; renamed
            into place when complete.
        rows: rows per strip (default: about 2 MB per strip of each of the four buffers).
        log: where the one-line summary goes.

    Returns:
        ``{"output", "features", "on_image", "pixels" (int64 [classes]), "ignored", "overlap_pixels"}``.
    """
    info = raster_info(image)
    require_crs(info, NEED)
    output = Path(output) if output is not None else label_path(image)
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{output}: the label is written as a GeoTIFF: name it .tif")
    if output.resolve() == Path(image).resolve():
        raise InputError(f"{output}: the output would overwrite the image")
    check_output_file(output)
    vl = labels if isinstance(labels, VectorLabels) else VectorLabels.read(labels)
    grid = GridFeatures.of(vl.layer, info, NEED)
    on_image = len(grid.touching(0, info.height))
    if on_image == 0:
        warn(f"{image}: no polygon of {vl.layer.path} lies on the image ({len(grid.geoms)} read; another area, "
             "or a wrong CRS in the file?): the label has no field")
    rows = rows or strip_rows(info.width, 4, budget=8 << 20)
    counts = np.zeros(256, np.int64)
    overlaps = 0
    background = vl.options.unlabelled == "background"
    with open_writer(output, info.width, info.height, 1, like=info, role="sparse_label") as w, \
            progress_bar(total=info.height, desc=output.name, unit="row", disable=not progress, leave=False) as bar:
        for y0, h in strips(info.height, rows):
            strip, n = burn_labels(grid, vl.classes, y0, h, background)
            counts += np.bincount(strip.ravel(), minlength=256)
            overlaps += n
            w.write(strip)
            bar.update(h)
    k = vl.options.classes
    labelled = int(counts[:k].sum())
    log(f"{image} -> {output}: {on_image} of {len(grid.geoms)} polygons on the image, {labelled} labelled pixels "
        f"({100 * labelled / max(info.width * info.height, 1):.1f}%), {overlaps} pixels where polygons of "
        "different classes overlap set to 255 (ignored)")
    return {"output": output, "features": len(grid.geoms), "on_image": on_image, "pixels": counts[:k],
            "ignored": int(counts[IGNORE]), "overlap_pixels": overlaps}


@contextlib.contextmanager
def rasterized_labels(sources: Sequence, options: LabelOptions | None, work_dir: str | os.PathLike,
                      progress: bool = True, log=print) -> Iterator[None]:
    """Give each of ``sources`` (objects with ``name``, ``image`` and ``label``) a label burnt from
    ``options``, in a temporary folder beside ``work_dir/vector_labels`` deleted when the block ends;
    nothing without ``options``. Every source is checked for a CRS, and the polygons read, before any
    label is written."""
    if options is None:
        yield
        return
    for s in sources:
        require_crs(check_image(s.image), NEED)
    vl = VectorLabels.read(options)
    tmp = temporary_dir(Path(work_dir) / "vector_labels")
    try:
        for s in sources:
            s.label = tmp / f"{s.name}_label.tif"
            rasterize_to(s.image, vl, s.label, progress=progress, log=log)
        yield
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
