"""cropmap: the library behind the entry scripts, one subpackage per stage, imported top down:

* :mod:`cropmap.core` - errors, flags and the runner, atomic files, the data root's names, classes, device, metric;
* :mod:`cropmap.raster` - pixel I/O (PNG, GeoTIFF), streaming strips and bands;
* :mod:`cropmap.data` - tiles, the synthetic set, augmentation, the data set, the input normalisation;
* :mod:`cropmap.train` - the training loop, hooks, checkpoints, logs;
* :mod:`cropmap.predict` - windows, the model loop, blending, map writers;
* :mod:`cropmap.maps` - voting, clean-ups, scoring, polygons.

A subpackage imports only those above it in this list (and ``models``/``losses``).
"""
