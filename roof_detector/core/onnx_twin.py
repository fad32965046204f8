"""The ONNX twin of a model file: CPU detection with ONNX Runtime alone, no torch.

A model file (TorchScript, the format of record) may have a twin beside it,
``<stem>.onnx`` (``models/roof_unet.onnx`` for the bundled model), made by
``python -m devtools onnx-twin`` (the release step ``make onnx-twin``) and checked
there against the TorchScript file. The twin carries, as ONNX metadata
properties:

    metadata.json   the model file's metadata record, unchanged
    source_sha256   SHA-256 of the TorchScript file it was made from
    precision       "fp32" or "int8" (statically quantised, QDQ)
    agreement       how it was checked against TorchScript (JSON)

A twin is used only when ``source_sha256`` matches the model file beside it,
so a retrained model never runs with a stale twin. Nothing here imports
torch: this module is the whole of the CPU inference path in QGIS.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

TWIN_SUFFIX = ".onnx"
META_KEY = "metadata.json"
SOURCE_KEY = "source_sha256"
PRECISION_KEY = "precision"
AGREEMENT_KEY = "agreement"


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` imports here."""
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken native library
        return False
    return True


def default_threads() -> int:
    """Intra-op threads: torch's choice when torch is already loaded, else the CPUs this process may use."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


#: A uint8 x int8 MatMulInteger (ONNX, opset 13): one row of eight 255s times an 8 x 8 matrix of
#: 127s, exactly 8 x 255 x 127 = 259,080 per output. ``tests/core/test_int8_saturation.py`` makes
#: it again with the onnx package and checks these bytes.
_PROBE_ONNX = (
    "CAgSDXJvb2ZfZGV0ZWN0b3I6nQEKGAoBYQoBYhIBeSINTWF0TXVsSW50ZWdlchIKaW50OF9wcm9iZSpLCAgICBADQgFiSkB/"
    "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/WhMKAWESDgoM"
    "CAISCAoCCAEKAggIYhMKAXkSDgoMCAYSCAoCCAEKAggIQgQKABAN"
)
_PROBE_EXACT = 8 * 255 * 127
_SATURATION: Dict[str, str] = {}


def int8_saturation() -> str:
    """Why ONNX Runtime's int8 arithmetic is not exact on this CPU, or "" when it is (probed once).

    ONNX Runtime multiplies uint8 activations by int8 weights; on x86-64 CPUs without VNNI
    (AVX-512 VNNI or AVX-VNNI: e.g. AMD Zen 2 and 3, Intel before Ice Lake on laptops and Cascade
    Lake on servers) its kernel adds each pair of products into 16 bits, which saturates at
    32,767, so an int8 twin calibrated and checked on a VNNI CPU computes something else there
    (on the tuning scenes, 0.02 less pixel IoU on four of five sets). The probe runs a tiny
    product whose pairs overflow 16 bits and compares the answer with the exact one, so it tests
    the kernels this ONNX Runtime really uses on this machine (ARM CPUs, VNNI CPUs: exact).
    """
    if "why" not in _SATURATION:
        _SATURATION["why"] = _probe_saturation()
    return _SATURATION["why"]


def twin_saturation(module: "OnnxModule") -> str:
    """:func:`int8_saturation` for an int8 twin, "" for an fp32 one (its arithmetic is exact)."""
    return int8_saturation() if module.precision == "int8" else ""


def _probe_saturation() -> str:
    import base64

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(base64.b64decode(_PROBE_ONNX), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"a": np.full((1, 8), 255, dtype=np.uint8)})[0]
    if np.all(got == _PROBE_EXACT):
        return ""
    return (
        f"ONNX Runtime's int8 arithmetic saturates on this CPU (no VNNI: {int(got.flat[0]):,} for "
        f"{_PROBE_EXACT:,}), so the int8 twin would not compute as it was checked"
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def twin_path(model_path: str | os.PathLike) -> Path:
    """Where the ONNX twin of a model file lies: beside it, ``.pt`` replaced by ``.onnx``."""
    p = Path(model_path)
    return p.with_suffix(TWIN_SUFFIX)


def read_twin_properties(onnx_path: str | os.PathLike) -> Dict[str, str]:
    """The metadata properties of an ONNX file (read through ONNX Runtime; the onnx package is not needed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)


def read_twin_metadata(onnx_path: str | os.PathLike) -> Dict[str, Any]:
    """The model metadata record an ONNX twin carries (ValueError when it has none)."""
    props = read_twin_properties(onnx_path)
    if META_KEY not in props:
        raise ValueError(
            f"{onnx_path} is an ONNX file without Roof Detector metadata; make it with `python -m devtools onnx-twin`"
        )
    return json.loads(props[META_KEY])


def find_twin(model_path: str, meta: Dict[str, Any]) -> Tuple[Optional[str], str]:
    """(path of the usable twin, "") or (None, why there is none) for a TorchScript model file."""
    twin = twin_path(model_path)
    if not twin.is_file():
        return None, f"no {twin.name} beside the model file"
    try:
        props = read_twin_properties(twin)
    except Exception as exc:  # noqa: BLE001 - a corrupt twin is reported, never fatal
        return None, f"{twin.name} cannot be read by ONNX Runtime ({str(exc).splitlines()[0][:200]})"
    if props.get(SOURCE_KEY) != file_sha256(model_path):
        return None, f"{twin.name} was made from another version of {Path(model_path).name} (stale twin)"
    try:
        twin_meta = json.loads(props.get(META_KEY, "null"))
    except ValueError:
        twin_meta = None
    if twin_meta != meta:
        return None, f"{twin.name} carries another metadata record than {Path(model_path).name}"
    return str(twin), ""


class OnnxModule:
    """Callable like the TorchScript module: float32 N x 3 x H x W in [0, 1] in, probabilities out.

    Takes and returns numpy arrays (``numpy_io``); a torch tensor in gives a
    torch tensor out, for callers that compare with TorchScript.
    """

    numpy_io = True

    def __init__(self, onnx_path: str, threads: Optional[int] = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: the reader and outline threads of
        # the pipeline then get the CPU between operators (8192 px bench: 20.2 -> 19.2 s;
        # the network alone is as fast, 85.4 vs 83.4 tiles/s).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = str(onnx_path)
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.precision = props.get(PRECISION_KEY, "fp32")
        self._runs: set = set()  # RunOptions of the runs in progress (see stop_runs)

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """Probabilities N x C x H x W (float32; C the outputs its metadata declares) for RGB N x 3 x H x W."""
        import onnxruntime as ort

        arr = np.ascontiguousarray(x, dtype=np.float32)
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4  # failures come back as exceptions; a stopped run logs none
        self._runs.add(run_options)
        try:
            return self.session.run(None, {"image": arr}, run_options)[0]
        finally:
            self._runs.discard(run_options)

    def stop_runs(self) -> None:
        """Ask every run in progress to stop (it raises in its own thread): Ctrl-C or a cancel
        abandoned it, and a graph may loop for ever (ONNX ``Loop``)."""
        for run_options in list(self._runs):
            run_options.terminate = True

    def __call__(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return self.run_numpy(x)
        import torch  # only callers holding torch tensors get here

        return torch.from_numpy(self.run_numpy(x.detach().cpu().numpy()))
