"""A tqdm progress bar fed by the engine's ``progress(fraction, message)`` callbacks."""

from __future__ import annotations

import sys


class ProgressBar:
    """Context manager: ``update(fraction, message)`` moves the bar, ``write(msg)`` logs above it."""

    def __init__(self, desc: str = ""):
        from tqdm import tqdm

        self._bar = tqdm(
            total=100,
            file=sys.stderr,
            unit="%",
            dynamic_ncols=True,
            desc=desc,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
        )

    def update(self, fraction: float, message: str = "") -> None:
        if message:
            self._bar.set_description_str(message, refresh=False)
        self._bar.update(round(100.0 * min(max(fraction, 0.0), 1.0), 1) - self._bar.n)

    def write(self, message: str) -> None:
        self._bar.write(message, file=sys.stderr)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
