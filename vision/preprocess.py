"""The one preprocessing spec: pixels (OpenCV uint8 images) to model input.

Training, evaluation, int8 calibration and the robot all call ``PreprocessSpec.apply``;
the spec serializes to the JSON block stored in checkpoints and bundle manifests.
Meaning (also in docs/bundle.md): optionally centre-crop a fraction of the short side,
resize the whole image to ``size`` with ``interpolation``, reorder channels to
``color``, multiply by ``scale``, then ``(x - mean) / std``; the result is CHW float32.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ["PreprocessSpec", "PreprocessError", "INTERPOLATIONS"]

INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}
_COLORS = ("RGB", "BGR")


class PreprocessError(ValueError):
    """An image or spec that preprocessing cannot handle."""


@dataclass(frozen=True)
class PreprocessSpec:
    size: tuple[int, int]  # (H, W)
    color: str = "RGB"
    interpolation: str = "area"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    center_crop: float | None = None
    _mean: np.ndarray = field(init=False, repr=False, compare=False)
    _inv_std: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) < 8:
            raise PreprocessError(f"size must be [H, W] with both >= 8, got {self.size!r}")
        if self.color not in _COLORS:
            raise PreprocessError(f"color must be one of {_COLORS}, got {self.color!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessError(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise PreprocessError(f"mean and std need 3 values each, std > 0; got {self.mean!r}, {self.std!r}")
        if self.center_crop is not None and not 0.0 < self.center_crop <= 1.0:
            raise PreprocessError(f"center_crop must be in (0, 1], got {self.center_crop!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "_mean", np.asarray(self.mean, np.float32).reshape(3, 1, 1))
        object.__setattr__(self, "_inv_std", (1.0 / np.asarray(self.std, np.float32)).reshape(3, 1, 1))

    # -- serialization -------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.center_crop is None:
            d.pop("center_crop")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PreprocessSpec":
        if not isinstance(d, dict):
            raise PreprocessError(f"preprocess spec must be a JSON object, got {type(d).__name__}")
        known = {"size", "color", "interpolation", "scale", "mean", "std", "center_crop"}
        unknown = set(d) - known
        if unknown:
            raise PreprocessError(f"unknown preprocess keys {sorted(unknown)}; expected {sorted(known)}")
        if "size" not in d:
            raise PreprocessError("preprocess spec has no 'size'")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    # -- the transform ----------------------------------------------------------------
    def resize(self, image: np.ndarray, *, input_color: str = "BGR") -> np.ndarray:
        """Crop/resize/reorder only: uint8 HxWx3 in the model's colour order."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            raise PreprocessError(f"expected a uint8 HxWx3 image, got {desc}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise PreprocessError(f"empty image of shape {image.shape}")
        if input_color not in _COLORS:
            raise PreprocessError(f"input_color must be one of {_COLORS}, got {input_color!r}")
        if self.center_crop is not None:
            h, w = image.shape[:2]
            side = max(1, int(round(min(h, w) * self.center_crop)))
            y0, x0 = (h - side) // 2, (w - side) // 2
            image = image[y0 : y0 + side, x0 : x0 + side]
        h, w = self.size
        out = cv2.resize(image, (w, h), interpolation=INTERPOLATIONS[self.interpolation])
        if input_color != self.color:
            out = out[:, :, ::-1]
        return out

    def normalize(self, resized: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 HxWx3 (already resized, model colour order) -> float32 CHW."""
        chw = resized.transpose(2, 0, 1)
        if out is None:
            out = np.empty(chw.shape, np.float32)
        np.multiply(chw, np.float32(self.scale), out=out, casting="unsafe")
        out -= self._mean
        out *= self._inv_std
        return out

    def apply(self, image: np.ndarray, *, input_color: str = "BGR", out: np.ndarray | None = None) -> np.ndarray:
        """One image (OpenCV BGR by default) -> float32 CHW model input."""
        return self.normalize(self.resize(image, input_color=input_color), out)

    def apply_batch(
        self, images: Sequence[np.ndarray], *, input_color: str = "BGR", out: np.ndarray | None = None
    ) -> np.ndarray:
        """Many images -> float32 NCHW; pass ``out`` to reuse a buffer in a hot loop."""
        n = len(images)
        shape = (n, 3, *self.size)
        if out is None or out.shape[0] < n or out.shape[1:] != shape[1:]:
            out = np.empty(shape, np.float32)
        for i, img in enumerate(images):
            self.apply(img, input_color=input_color, out=out[i])
        return out[:n]

    @classmethod
    def for_model(cls, name: str, size: tuple[int, int] | int | None = None) -> "PreprocessSpec":
        """Default spec for a registered model (its input size unless overridden)."""
        from .registry import get_entry

        if size is None:
            size = get_entry(name).input_size
        if isinstance(size, int):
            size = (size, size)
        return cls(size=tuple(size))
