"""crossnet: connect containers on different hosts into one network."""

from crossnet import _lightimport

__version__ = "0.1.0"

_lightimport.install()  # pyroute2 without its import-everything __init__ (start-up time)
