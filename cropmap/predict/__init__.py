"""From a checkpoint to full-size maps: windows, the model loop with TTA and test-time adaptation,
blending, and the writers of maps, probabilities and previews."""
