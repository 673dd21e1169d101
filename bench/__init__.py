"""Speed and memory benchmarks and the GPU check, run by hand from the repository root as modules:
``python -m bench.NAME --help`` for NAME in fill, geotiff, models, png_read, predict, tiling, train, gpu_check.
What they share is in :mod:`bench.common`; the accuracy studies are in ``experiments/``."""
