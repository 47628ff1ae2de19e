"""The deploy side's exceptions: one base class, one subclass per way a step refuses."""
from __future__ import annotations

__all__ = ["DeployError", "DeployDataError", "ParityError", "BundleExistsError"]


class DeployError(RuntimeError):
    """Export, verification or benchmarking could not be done as asked."""


class DeployDataError(DeployError):
    """The images needed for parity, calibration or evaluation cannot be found or read."""


class ParityError(DeployError):
    """The exported model disagrees with PyTorch; ``report`` holds the numbers."""

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class BundleExistsError(DeployError):
    """The output directory already exists and overwriting was not asked for."""
