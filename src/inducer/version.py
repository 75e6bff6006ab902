"""The version of inducer (a leaf: modules that write it into files import it from here)."""

__version__ = "0.1.0"
