"""deepmr_utils: the library behind the DeepMR book."""

__version__ = "0.1.0"
