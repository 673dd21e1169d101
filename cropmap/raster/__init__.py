"""Pixel I/O: every raster the pipeline reads or writes goes through this package.

Formats (:mod:`.formats`) are chosen by file suffix: :mod:`.png` and :mod:`.geotiff`. Format-independent on top:

* :class:`RasterInfo`, :func:`raster_info` - header facts without decoding; :class:`Georef` - where a
  georeferenced raster lies;
* :func:`check_image`, :func:`check_label`, :func:`check_map`, :func:`check_georef`, :func:`check_label_values` - validation
  before any work, one :class:`~cropmap.core.cli.InputError` line each;
* :func:`open_reader`, :func:`iter_strips`, :func:`iter_row_windows`, :func:`iter_zip` - streaming reads
  in bounded memory; :func:`open_writer` - streaming writes, renamed into place when complete;
* :data:`IGNORE`, :func:`valid_mask`, :func:`any_valid` - the no-data conventions;
* :func:`read_png`, :func:`write_png` - small files (tiles) whole.

Arrays: images ``uint8 [H, W, C]`` RGB(A), labels and maps ``uint8 [H, W]``.
"""

from cropmap.raster.base import IGNORE, Georef, RasterInfo, valid_mask
from cropmap.raster.checks import check_georef, check_image, check_label, check_label_values, check_map, check_map_values
from cropmap.raster.formats import FORMATS, format_of, histogram, open_reader, open_writer, raster_info
from cropmap.raster.png import read_png, write_png
from cropmap.raster.streams import any_valid, iter_row_windows, iter_strips, iter_zip, strip_rows

__all__ = [
    "FORMATS", "Georef", "IGNORE", "RasterInfo", "any_valid", "check_georef", "check_image", "check_label",
    "check_label_values", "check_map",
    "check_map_values", "format_of", "histogram", "iter_row_windows", "iter_strips", "iter_zip",
    "open_reader", "open_writer", "raster_info", "read_png", "strip_rows", "valid_mask", "write_png",
]
