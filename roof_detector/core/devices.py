"""Which device runs a model: resolving ``auto`` / ``cpu`` / ``cuda`` / ``mps``, and naming it.

torch is optional on the CPU (a model with an ONNX twin runs without it): without torch
the only device is a :class:`CpuDevice`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .errors import ModelError


def torch_available() -> bool:
    """Whether torch imports here (needed for GPUs, fine-tuning, models without an ONNX twin and CPUs without VNNI)."""
    try:
        import_torch()
    except Exception:  # noqa: BLE001 - ImportError, or a broken install raising OSError
        return False
    return True


def import_torch() -> Any:
    """``import torch``, with Ctrl-C and SIGTERM held until it is done (on the main thread).

    A Ctrl-C landing inside torch's C++ module initialisation does not raise KeyboardInterrupt
    there: pybind11 meets it in code that cannot throw, and the process aborts ("terminate called
    after throwing an instance of 'pybind11::error_already_set'", SIGABRT: 3 of 178 interrupts
    0.5-0.7 s into a run on a 2-core machine; 0 of 152 held). Held, the signal arrives when the
    import is done, as an ordinary KeyboardInterrupt.
    """
    import signal
    import sys
    import threading

    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        import torch
    else:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            import torch
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return torch


@functools.lru_cache(maxsize=1)  # ldconfig and gcc behind find_library: 15-22 ms a call
def cuda_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver torch could use, found without importing torch.

    Importing torch takes 2-3 s: on QGIS's GUI thread (the dialog's device combo) it froze QGIS
    on the first click of every session, and the CPU's ONNX Runtime paths do not need it.
    """
    import ctypes.util
    import os
    import sys

    if sys.platform.startswith("linux"):
        # the kernel driver, WSL2's GPU bridge, or a CUDA driver library on the loader's path
        if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/dxg"):
            return True
        return ctypes.util.find_library("cuda") is not None
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is not None
    return False  # macOS: no CUDA


def cpu_without_torch(device: str) -> bool:
    """Whether ``device`` is the CPU without asking torch: ``cpu``, or ``auto`` where no GPU torch
    could use is present (no NVIDIA driver; not macOS, where ``auto`` may be MPS)."""
    import sys

    device = (device or "auto").lower()
    return device == "cpu" or (device == "auto" and sys.platform != "darwin" and not cuda_driver_present())


@dataclass(frozen=True)
class CpuDevice:
    """The CPU where torch is not installed: quacks like ``torch.device("cpu")`` for ``.type``."""

    type: str = "cpu"

    def __str__(self) -> str:
        return "cpu"


def resolve_device(device: str = "auto") -> Any:
    """``auto`` picks CUDA, then MPS, then CPU; explicit names are checked.

    Without torch only the CPU exists (a :class:`CpuDevice`).
    """
    device = (device or "auto").lower()
    if not torch_available():
        if device in ("auto", "cpu"):
            return CpuDevice()
        raise ModelError(
            f"Device {device!r} needs PyTorch, which is not installed here; use the CPU, or install "
            "torch (QGIS: Plugins > Roof Detector > Check dependencies)"
        )
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("CUDA was requested but no CUDA GPU is available to PyTorch; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("MPS was requested but is not available; use --device cpu or auto")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"Unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # e.g. `meta`: tensors without data, nothing would be computed
        raise ModelError(f"Device {device!r} cannot run the model; use auto, cpu or cuda")
    return dev


def device_description(device: Any) -> str:
    """Human-readable name of a device, e.g. 'CUDA: NVIDIA H100' or 'CPU (2 threads)'."""
    if isinstance(device, CpuDevice):
        from .onnx_twin import default_threads

        return f"CPU ({default_threads()} threads)"
    import torch

    if device.type == "cuda":
        try:
            return f"CUDA: {torch.cuda.get_device_name(device)}"
        except Exception:  # noqa: BLE001 - a description must not fail a finished run
            return "CUDA GPU"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"
