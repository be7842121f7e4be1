"""modelfetch: a download manager for large model files."""

__version__ = "0.1.0"
