"""From source images to training data: the tile grid and ``tiles.csv``, cutting tiles, the synthetic set,
augmentation, the tile data set, the one input normalisation and the radiometric statistics."""
