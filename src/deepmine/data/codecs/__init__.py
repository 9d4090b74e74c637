"""A datamodule's fitted preprocessing, kept apart from the data it was fitted on.

A logged model must take what a user has (a table's raw columns, image files of any size, a
series with its time column) and answer in the user's terms (class names, units, timestamps).
What turns the one into the net's inputs is learned from the training split (column order,
categories, fill values, scaling statistics, image size and normalization, series lookback),
so each datamodule hands it over as a codec (`datamodule.codec()`): `encode(raw)` gives the
tensor the net saw in training, bit for bit on the same rows, and the codec names the outputs
(`class_names`, `target_names`, a series' future times).

A codec holds plain numbers and lists only (no tensors of the training data, no file handles),
so it pickles small with the logged model, and `references` carries the training
distribution of each input feature, for the drift table of `deepmine predict`
(`deepmine.data.drift`).
"""

from deepmine.data.codecs.image import ImageCodec
from deepmine.data.codecs.series import SeriesCodec
from deepmine.data.codecs.table import TableCodec

__all__ = ["ImageCodec", "SeriesCodec", "TableCodec"]
