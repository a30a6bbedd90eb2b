"""Data: sources, the Dataset (uint8 images, labels, noisy-example masks) and noise."""
from memjax.data.dataset import Dataset, Split, downscale
from memjax.data.noise import random_inputs, random_labels, with_noise
from memjax.data.sources import DataShape, data_shape, load_dataset, read_npz

__all__ = ["DataShape", "Dataset", "Split", "data_shape", "downscale", "load_dataset",
           "random_inputs", "random_labels", "read_npz", "with_noise"]
