"""leafscout: find diseased plants from a small field robot."""
__version__ = "0.1.0"
