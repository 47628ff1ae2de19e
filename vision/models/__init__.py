"""Architectures; importing this package registers them."""
from . import leafnet, lenet  # noqa: F401
