"""What ``fit`` records: one entry per epoch."""

from __future__ import annotations

__all__ = ["History"]


class History:
    """What ``fit`` recorded, one entry per epoch.

    ``history.history`` maps ``"loss"``, each metric, their ``"val_"`` versions
    and ``"lr"`` to lists of floats; ``history.epoch`` lists the epoch indices
    and ``history.times`` the wall time of each epoch in seconds.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"loss": []}
        self.epoch: list[int] = []
        self.times: list[float] = []

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def record(self, epoch: int, seconds: float, **values: float) -> None:
        self.epoch.append(epoch)
        self.times.append(seconds)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"
