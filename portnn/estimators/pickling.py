"""What the estimators pickle: their model and other libraries' arrays moved to NumPy,
together with the backend and device to restore them onto (NumPy, with a warning, where
that backend cannot be used)."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np

from ..backend import Backend, BackendError, _make_backend, backend_of, to_numpy
from ..nn import Sequential


class _HostArray:
    """An array of another library, pickled as NumPy together with where it lived."""

    def __init__(self, x: Any) -> None:
        place = backend_of(x)
        self.value = np.array(to_numpy(x))
        self.backend = str(place)
        self.device = _picklable(place.device)

    def restore(self) -> Any:
        place = _place_or_numpy(self.backend, self.device)
        return self.value if place is None else place.asarray(self.value, copy=True)


def _picklable(device: Any) -> Any:
    try:
        pickle.dumps(device)
    except Exception:  # noqa: BLE001 -- a device that cannot be pickled becomes the default one
        return None
    return device


def _place_or_numpy(name: str, device: Any) -> Backend | None:
    """The backend (None for NumPy) to restore onto; NumPy, with a warning, if it is not usable here."""
    if name == "numpy":
        return None
    try:
        return _make_backend(name, device)
    except (BackendError, TypeError, ValueError, RuntimeError) as e:
        warnings.warn(
            f"the estimator was pickled on backend {name!r}, which cannot be used here ({e}); "
            "it is restored on NumPy",
            UserWarning,
            stacklevel=3,
        )
        return None


def _model_to_host(model: Sequential) -> dict[str, Any]:
    """A copy of ``model`` moved to NumPy (optimizer state included), and where it lived."""
    return {
        "model": model.copy().to("numpy"),
        "backend": str(model.backend),
        "device": _picklable(model.backend.device),
    }


def _model_from_host(saved: dict[str, Any]) -> Sequential:
    place = _place_or_numpy(saved["backend"], saved["device"])
    model = saved["model"]
    return model if place is None else model.to(str(place), device=place.device)
