"""crossnet: connect containers on different hosts into one network."""

__version__ = "0.1.0"
