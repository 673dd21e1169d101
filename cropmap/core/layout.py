"""The data root's layout and the name of every file the pipeline reads or writes (see the contract).

::

    {data_root}/jingwei_round1_train_20190619/image_1.png  image_1_label.png ...   training sources
    {data_root}/jingwei_round1_test_a_20190619/image_3.png ...                     test sources
    {data_root}/train/data/  train/label/  train/tiles.csv                        training tiles
    {data_root}/test/image3/ ...  test/tiles.csv                                  test windows
    {data_root}/model/{model}_{backbone}_{exp}_{tag}.pth  model/{run}/log.csv      checkpoints, logs
    {data_root}/submit/{image}_predict[_{name}].png  ..._preview.png  ..._prob{c}.png   maps
                                            (.tif instead of .png for GeoTIFF sources or --format tif)

Sources may be PNGs or GeoTIFFs (``.tif``/``.tiff``); a name without a suffix is looked up with each.

Every other module asks this one for a path instead of spelling a folder or a suffix itself.
"""

from __future__ import annotations

import os
from pathlib import Path

TRAIN_SOURCE_DIR = "jingwei_round1_train_20190619"
TEST_SOURCE_DIR = "jingwei_round1_test_a_20190619"
TRAIN_DIR = "train"
TEST_DIR = "test"
MODEL_DIR = "model"
SUBMIT_DIR = "submit"
TILES_CSV = "tiles.csv"
LABEL_SUFFIX = "_label"
DEFAULT_TRAIN_IMAGES = ["image_1", "image_2"]
DEFAULT_TEST_IMAGES = ["image_3", "image_4"]
#: Suffixes a source image may have, in the order a bare name is looked up.
SOURCE_SUFFIXES = (".png", ".tif", ".tiff")
#: ``--format`` of maps -> their suffix.
MAP_FORMATS = {"png": ".png", "tif": ".tif"}


# ---- sources ------------------------------------------------------------------------------------


def _find(folder: Path, name: str, suffix: str | None) -> Path:
    """``folder/name+suffix``; without ``suffix`` the first of :data:`SOURCE_SUFFIXES` that exists (else ``.png``)."""
    if suffix is None:
        for s in SOURCE_SUFFIXES:
            if (folder / f"{name}{s}").is_file():
                return folder / f"{name}{s}"
        suffix = SOURCE_SUFFIXES[0]
    return folder / f"{name}{suffix}"


def source_path(data_root: str | os.PathLike, source_dir: str, entry: str, suffix: str | None = None) -> Path:
    """An ``--images`` entry as a file: a path (it has a folder or a file suffix) as given, else a name
    looked up as ``{data_root}/{source_dir}/{entry}{suffix}`` (without ``suffix``: ``.png``, ``.tif`` or
    ``.tiff``, whichever exists first; ``.png`` if none does)."""
    p = Path(entry)
    if p.suffix or len(p.parts) > 1:
        return p
    return _find(Path(data_root) / source_dir, entry, suffix)


def label_path(image_path: str | os.PathLike) -> Path:
    """The label beside a source: ``image_1.png`` -> ``image_1_label.png`` (same folder and suffix)."""
    p = Path(image_path)
    return p.with_name(f"{p.stem}{LABEL_SUFFIX}{p.suffix}")


def predict_source(data_root: str | os.PathLike, image: str, suffix: str | None = None) -> Path:
    """A test image of the layout (what predict.py, fill_hole.py and score.py read):
    ``{data_root}/{TEST_SOURCE_DIR}/{image}{suffix}`` (without ``suffix``: as :func:`source_path`)."""
    return _find(Path(data_root) / TEST_SOURCE_DIR, image, suffix)


# ---- tiles --------------------------------------------------------------------------------------


def tile_name(image: str, y: int, x: int) -> str:
    """The contract's tile file name, e.g. ``image_1_1024_2560.png``."""
    return f"{image}_{y}_{x}.png"


def train_dir(data_root: str | os.PathLike) -> Path:
    """``{data_root}/train``: ``data/`` (image tiles), ``label/`` (label tiles) and ``tiles.csv``."""
    return Path(data_root) / TRAIN_DIR


def train_tile_dirs(data_root: str | os.PathLike) -> tuple[Path, Path]:
    """``({data_root}/train/data, {data_root}/train/label)``: image and label tiles of the same names."""
    root = train_dir(data_root)
    return root / "data", root / "label"


def tiles_csv(folder: str | os.PathLike) -> Path:
    """The index of the tiles in ``folder`` (``train_dir`` or ``windows_dir``): ``{folder}/tiles.csv``."""
    return Path(folder) / TILES_CSV


def windows_dir(data_root: str | os.PathLike) -> Path:
    """``{data_root}/test``: one folder of windows per image and ``tiles.csv``."""
    return Path(data_root) / TEST_DIR


def window_folder(image: str) -> str:
    """Folder (under ``data/test/``) of an image's test windows: ``image_3`` -> ``image3``."""
    return image.replace("_", "")


# ---- checkpoints --------------------------------------------------------------------------------


def model_dir(data_root: str | os.PathLike) -> Path:
    """``{data_root}/model``: checkpoints and one log folder per run."""
    return Path(data_root) / MODEL_DIR


def run_name(args: dict) -> str:
    """``{model}_{backbone}_{exp}``: the stem of a run's checkpoints and the name of its log folder."""
    return f"{args['model']}_{args['backbone']}_{args['exp']}"


def checkpoint_path(model_folder: str | os.PathLike, args: dict, tag: str) -> Path:
    """``{model_folder}/{run_name}_{tag}.pth``; ``tag`` is ``epoch{N}``, ``last`` or ``best``."""
    return Path(model_folder) / f"{run_name(args)}_{tag}.pth"


# ---- maps ---------------------------------------------------------------------------------------


def submit_dir(data_root: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Where maps go: ``output_dir`` when given, else ``{data_root}/submit``."""
    return Path(output_dir) if output_dir else Path(data_root) / SUBMIT_DIR


def map_suffix(source: str | os.PathLike | None, fmt: str | None = None) -> str:
    """Suffix of the maps of ``source``: ``.png`` or ``.tif`` for ``fmt`` ``png``/``tif`` (``--format``),
    else the source's own format (a GeoTIFF source gets GeoTIFF maps, anything else PNG)."""
    if fmt:
        return MAP_FORMATS[fmt]
    geotiff = source is not None and Path(source).suffix.lower() in (".tif", ".tiff")
    return MAP_FORMATS["tif" if geotiff else "png"]


def map_path(folder: str | os.PathLike, image: str, name: str | None = None, suffix: str = ".png") -> Path:
    """``{folder}/{image}_predict.png``, or ``{image}_predict_{name}.png`` for one model's map."""
    return Path(folder) / (f"{image}_predict" + (f"_{name}" if name else "") + suffix)


def preview_path(map_file: str | os.PathLike) -> Path:
    """The colour preview beside a map: ``X_preview.png`` (always PNG)."""
    p = Path(map_file)
    return p.with_name(f"{p.stem}_preview.png")


def errors_path(map_file: str | os.PathLike) -> Path:
    """The error view beside a map, against its label: ``X_errors.png`` (always PNG)."""
    p = Path(map_file)
    return p.with_name(f"{p.stem}_errors.png")


def prob_paths(map_file: str | os.PathLike, num_classes: int) -> list[Path]:
    """The per-class probabilities beside a map (``predict.py --save_probs``): ``X_prob0.png`` ..."""
    p = Path(map_file)
    return [p.with_name(f"{p.stem}_prob{c}{p.suffix}") for c in range(num_classes)]


def is_derived(map_file: str | os.PathLike) -> bool:
    """True for files written beside a map (preview, probabilities), which are not maps themselves."""
    stem = Path(map_file).stem
    return stem.endswith("_preview") or (stem.rpartition("_prob")[2].isdigit() and "_prob" in stem)
