"""hplab: a test lab for huge-page backed kernel tables."""

__version__ = "0.1.0"
