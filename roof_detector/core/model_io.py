"""Model files: TorchScript with a ``metadata.json`` record in ``_extra_files``.

The record's keys and their checks: :mod:`.model_metadata`.

torch is imported only where it is needed: on the CPU a model with an ONNX
twin beside it (``roof_unet.onnx``, see :mod:`.onnx_twin`) loads and runs
with ONNX Runtime alone, so detection in QGIS works without torch.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .devices import CpuDevice, cpu_without_torch, import_torch, resolve_device, torch_available
from .errors import ModelError, OutputError
from .model_metadata import FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, model_outputs, validate_metadata  # noqa: F401
from .locations import bundled_model_file
from .torchscript import jit_load as _torch_jit_load
from .torchscript import quiet_deprecations as _quiet_torch_deprecations
from .temp_files import remove_stale, temp_path

BUNDLED_MODEL_PATH = bundled_model_file()


@dataclass
class LoadedModel:
    """A model (TorchScript module or ONNX Runtime session) on its device with its metadata."""

    module: Any
    metadata: Dict[str, Any]
    device: Any  # torch.device, or CpuDevice without torch
    path: str
    half: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def gsd_m(self) -> float:
        return float(self.metadata["gsd_m"])

    @property
    def tile_size_px(self) -> int:
        return int(self.metadata["tile_size_px"])

    @property
    def overlap_px(self) -> int:
        return int(self.metadata["overlap_px"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def outputs(self) -> list:
        """Output channels in order (``["building"]`` for models without the record)."""
        return model_outputs(self.metadata)

    @property
    def core_threshold(self) -> Optional[float]:
        """Separation models: the score threshold of a roof's core; None for building-only models."""
        if len(self.outputs) == 1:
            return None
        return float(self.metadata.get("separation", {}).get("core_threshold", 0.5))


#: Words of TorchScript operator names that reach files or processes: a model that calls one is refused.
#: (TorchScript is no sandbox: ``torch.from_file(path, shared=True)`` overwrote a file during a detection.)
FORBIDDEN_OPERATION_WORDS = ("from_file", "save", "load", "pickle", "open", "system", "popen", "mmap")


def check_graph_operations(module: Any, path: str) -> None:
    """Raise :class:`ModelError` when the model's code calls a file or process operation.

    Every method of the module and its submodules is inspected (their graphs
    with calls inlined, and the blocks of loops and branches). A model file
    is still code: this stops the known ways out, not every misuse; load
    models from a trusted source only. ``module``: a ``torch.jit.ScriptModule``.
    """
    import torch

    found = set()
    graphs = []
    for name in module._c._method_names():
        try:
            graph = module._c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(graph)
            graphs.append(graph)
        except RuntimeError:
            continue
    for _, sub in module.named_modules():
        if isinstance(sub, torch.jit.ScriptModule) and sub is not module:
            graphs.extend(sub._c._get_method(m).graph for m in sub._c._method_names())

    def visit(block) -> None:
        for node in block.nodes():
            op = node.kind().split("::")[-1].lower()
            if any(word in op for word in FORBIDDEN_OPERATION_WORDS):
                found.add(node.kind())
            for inner in node.blocks():
                visit(inner)

    for graph in graphs:
        visit(graph)
    if found:
        raise ModelError(
            f"{path} is refused: its code calls {', '.join(sorted(found))}, which reads or writes "
            "files (a model file is a program). Use models from a trusted source only"
        )


def read_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """Read only the metadata record of a model file (cheap: no weights are loaded)."""
    path = str(path)
    if not os.path.isfile(path):
        raise ModelError(f"Model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            all_names = zf.namelist()
            names = [n for n in all_names if n.endswith("extra/" + METADATA_FILE)]
            if not names:
                if not any("/code/" in n for n in all_names):
                    # torch.save() writes the same zip layout, without TorchScript code
                    raise ModelError(
                        f"{path} is not a TorchScript model: a zip archive without Roof Detector "
                        "metadata or TorchScript code (a checkpoint saved with torch.save?); "
                        "export it with `python -m devtools train` or `finetune`"
                    )
                raise ModelError(
                    f"{path} is a TorchScript file without Roof Detector metadata "
                    f"(no extra/{METADATA_FILE}); export it with this plugin's training tools"
                )
            raw = zf.read(names[0])
    except zipfile.BadZipFile:
        raise ModelError(
            f"{path} is not a TorchScript model (not a valid archive; the file may be truncated or of another format)"
        ) from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ModelError(f"{path}: metadata.json is not valid JSON ({exc})") from None
    return validate_metadata(meta, path)


def save_model(module: Any, path: str | os.PathLike, metadata: Dict[str, Any]) -> str:
    """Script (if needed) and save ``module`` with ``metadata``, atomically.

    ``module`` must take RGB in [0, 1] and return probabilities (wrap a raw
    network in :class:`roof_detector.core.unet.ExportWrapper`).
    """
    import torch

    meta = copy.deepcopy(metadata)
    meta.setdefault("format", FORMAT_NAME)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("output", "probability")
    validate_metadata(meta, str(path))
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module.eval())
    # Serialised in memory first (a model is a few MB): torch's zip writer, on a full disk,
    # throws a C++ c10::Error from a destructor, which aborts the whole process (and QGIS with it).
    # Python's own writes below fail with a catchable OSError instead.
    buffer = io.BytesIO()
    try:
        torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: json.dumps(meta, indent=1)})
    except RuntimeError as exc:  # c10::Error raised while scripting/serialising, not by the disk
        raise ModelError(f"Cannot serialise the model for {path} ({str(exc).splitlines()[0]})") from None
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(str(path), ".pt")
        tmp = temp_path(str(path), ".pt")
        with open(tmp, "xb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # a model file is meant to be shared, whatever the umask
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports write failures as RuntimeError
        full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space" in str(exc).lower()
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OutputError(
            f"Cannot write the model file {path} ({detail}); "
            + (
                "the disk is full: free space or choose another folder"
                if full
                else "check the folder is writable and has free space"
            )
            + ". No model file was written."
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)


BACKENDS = ("auto", "torch", "onnxruntime")


def load_model(
    path: Optional[str | os.PathLike] = None, device: str = "auto", half: Optional[bool] = None, backend: str = "auto"
) -> LoadedModel:
    """Load a model file (default: the bundled one) on ``device``.

    Half precision is used on CUDA unless ``half=False``. On CPU, ``backend``
    ``auto`` runs the model with ONNX Runtime when it is installed: from the
    model's ONNX twin when one made from this very file lies beside it (no
    torch needed; an int8 twin only where ONNX Runtime's int8 arithmetic is
    exact, :func:`.onnx_twin.int8_saturation`, or where torch is missing), else
    exported from TorchScript into a cache and checked against it (later loads run a checked, unchanged
    entry without torch: :mod:`.onnx_cache`); failing that, with TorchScript frozen and optimised for
    inference (conv+BN folding). ``path`` may also name an ONNX twin itself
    (``.onnx``, CPU only). The backend in use is in
    ``LoadedModel.extra["backend"]``.
    """
    if backend not in BACKENDS:
        raise ModelError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    path = str(path or BUNDLED_MODEL_PATH)
    if path.lower().endswith(".onnx"):
        return _load_onnx_file(path, device, backend)
    meta = read_metadata(path)
    # the CPU's ONNX Runtime paths need no torch, and importing it costs seconds (and QGIS's GUI half a second)
    dev = CpuDevice() if cpu_without_torch(device) else resolve_device(device)
    extra: Dict[str, Any] = {"backend": "torch"}
    use_onnx = dev.type == "cpu" and backend in ("auto", "onnxruntime")
    if use_onnx:
        twin = _twin_model(path, meta, dev, backend, extra)
        if twin is not None:
            return twin
    module = _torchscript_module(path)
    if isinstance(dev, CpuDevice):  # torch runs the model after all
        dev = resolve_device("cpu")
    use_half = dev.type == "cuda" if half is None else bool(half and dev.type == "cuda")
    if use_onnx:
        exported = _exported_onnx_model(path, meta, module, dev, backend, extra)
        if exported is not None:
            return exported
    if dev.type == "cpu":
        module = _optimised_for_cpu(module)
    module = module.to(dev)
    if use_half:
        module = module.half()
    return LoadedModel(module=module, metadata=meta, device=dev, path=path, half=use_half, extra=extra)


def load_warnings(model: LoadedModel) -> List[str]:
    """What a detection with ``model`` tells its user about how the model was loaded: one line each."""
    extra = model.extra
    out = []
    if extra.get("int8_saturation"):
        out.append(  # the measured why stays in extra["int8_saturation"] (and the README)
            "Fewer buildings may be found: this CPU has no VNNI instructions, and ONNX Runtime computes "
            "the bundled int8 model inexactly on it. Install PyTorch to run the model in fp32 (QGIS: "
            "Plugins > Roof Detector > Check dependencies…; elsewhere: pip install torch)."
        )
    problem = extra.get("onnx_cache_problem")
    if problem and extra.get("backend") == "onnxruntime":
        out.append(
            f"The model's ONNX graph cannot be cached ({problem}), so every run prepares it again "
            "(seconds): set ROOF_DETECTOR_CACHE to a writable folder."
        )
    elif problem:
        out.append(
            f"ONNX Runtime is not used, as the model's ONNX graph cannot be written ({problem}): "
            "the model runs with TorchScript, slower; set ROOF_DETECTOR_CACHE to a writable folder."
        )
    return out


def _twin_model(path: str, meta: Dict[str, Any], dev, backend: str, extra: Dict[str, Any]) -> Optional[LoadedModel]:
    """The model run from its ONNX twin, when one made from ``path`` lies beside it; else None (why in ``extra``).

    Raises :class:`ModelError` when neither the twin nor PyTorch can run it.
    """
    from . import onnx_twin

    if onnx_twin.onnxruntime_available():
        twin, why_not = onnx_twin.find_twin(path, meta)
        saturated = None
        if twin is not None:
            module = onnx_twin.OnnxModule(twin)
            saturates = onnx_twin.twin_saturation(module)
            if not saturates:
                return _onnx_loaded(module, meta, dev, path, twin)
            saturated, why_not = module, saturates  # fp32, exported from the model file, computes as checked
        exported = _verified_export(path, meta, dev, why_not)
        if exported is not None:
            return exported
        if saturated is not None and not torch_available():  # the twin, off by a little, beats no detection
            loaded = _onnx_loaded(saturated, meta, dev, path, twin)
            loaded.extra["int8_saturation"] = why_not
            return loaded
        if not torch_available():
            raise ModelError(
                f"{path} has no usable ONNX twin ({why_not}) and PyTorch is not installed to run "
                "it; install torch (QGIS: Plugins > Roof Detector > Check dependencies)"
            )
        extra["onnx_twin_unused"] = why_not
    elif not torch_available():
        raise ModelError(
            "Neither ONNX Runtime nor PyTorch is installed: install onnxruntime "
            "(QGIS: Plugins > Roof Detector > Check dependencies)"
        )
    elif backend == "onnxruntime":
        raise ModelError("ONNX Runtime is not installed: `pip install onnxruntime`, or use backend torch")
    return None


def _verified_export(path: str, meta: Dict[str, Any], dev, why_not: str) -> Optional[LoadedModel]:
    """The model's cached fp32 export, run without torch, when an earlier load checked it against
    TorchScript and it is unchanged since (:mod:`.onnx_cache`); else None."""
    from . import onnx_cache, onnx_twin

    entry = onnx_cache.verified_entry(path)
    if entry is None:
        return None
    try:
        loaded = _onnx_loaded(onnx_twin.OnnxModule(entry), meta, dev, path, entry)
    except Exception:  # noqa: BLE001 - onnxruntime's own error types: the full load checks it again
        return None
    loaded.extra["onnx_twin_unused"] = why_not
    return loaded


def _torchscript_module(path: str):
    """The TorchScript module of ``path``, checked and in eval mode; :class:`ModelError` when it cannot load."""
    import_torch()  # without torch: ImportError here, as always, not a "could not be loaded"

    try:
        module = _torch_jit_load(path)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError / zip errors
        raise ModelError(f"{path} could not be loaded as TorchScript: {str(exc).splitlines()[0]}") from None
    check_graph_operations(module, path)
    module.eval()
    return module


def _exported_onnx_model(
    path: str, meta: Dict[str, Any], module, dev, backend: str, extra: Dict[str, Any]
) -> Optional[LoadedModel]:
    """The model exported from TorchScript to ONNX (cached) and run by ONNX Runtime; None to stay on TorchScript."""
    from . import onnx_backend, onnx_twin

    if not onnx_twin.onnxruntime_available():
        return None
    try:
        ort_module, uncached = onnx_backend.onnx_module_for(path, meta, module)
        on_disk = os.path.exists(ort_module.path)  # not an export loaded from a temporary folder
        extra.update({"backend": "onnxruntime", "onnx_path": ort_module.path if on_disk else None})
        extra["onnx_precision"] = "fp32"
        if uncached:  # detection says so: every load exports again until the cache is writable
            extra["onnx_cache_problem"] = uncached
        return LoadedModel(module=ort_module, metadata=meta, device=dev, path=path, half=False, extra=extra)
    except Exception as exc:  # noqa: BLE001 - any export/runtime problem: TorchScript still works
        if backend == "onnxruntime":
            raise ModelError(f"{path} cannot run with ONNX Runtime: {exc}") from None
        extra["onnx_fallback_reason"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError):  # no folder to export into at all: slower, and detection says so
            extra["onnx_cache_problem"] = extra["onnx_fallback_reason"]
    return None


def _optimised_for_cpu(module):
    """TorchScript frozen and optimised for inference (conv+BN folding); the module as is when that fails."""
    import torch

    ctx = _quiet_torch_deprecations()
    try:
        return torch.jit.optimize_for_inference(torch.jit.freeze(module))
    except Exception:  # noqa: BLE001 - a model that cannot be frozen still runs unfrozen
        return module
    finally:
        ctx.__exit__(None, None, None)


def _load_onnx_file(path: str, device: str, backend: str) -> LoadedModel:
    """An ONNX twin named directly: CPU with ONNX Runtime only."""
    from . import onnx_twin

    if backend == "torch":
        raise ModelError(f"{path} is an ONNX model: it runs with ONNX Runtime, not torch")
    if (device or "auto").lower() not in ("auto", "cpu"):
        raise ModelError(f"{path} is an ONNX model: it runs on the CPU only; use its TorchScript file for {device}")
    if not onnx_twin.onnxruntime_available():
        raise ModelError("ONNX Runtime is not installed: install onnxruntime to run an .onnx model")
    if not os.path.isfile(path):
        raise ModelError(f"Model file not found: {path}")
    try:
        meta = onnx_twin.read_twin_metadata(path)
        module = onnx_twin.OnnxModule(path)
    except ValueError as exc:  # no metadata, or metadata that is not JSON
        raise ModelError(f"{path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (InvalidProtobuf, Fail...)
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelError(
            f"{path} is not an ONNX model ONNX Runtime can load ({detail}); the file may be truncated "
            "or of another format: make it again with `python -m devtools onnx-twin`"
        ) from None
    loaded = _onnx_loaded(module, validate_metadata(meta, path), CpuDevice(), path, path)
    saturates = onnx_twin.twin_saturation(module)  # named on purpose: it runs, and detection warns
    if saturates:
        loaded.extra["int8_saturation"] = saturates
    return loaded


def _onnx_loaded(module, meta: Dict[str, Any], dev, path: str, onnx_path: str) -> LoadedModel:
    """A model that runs with ONNX Runtime (``onnx_path``), named ``path`` (its TorchScript file or itself)."""
    extra = {"backend": "onnxruntime", "onnx_path": onnx_path, "onnx_precision": module.precision}
    return LoadedModel(module=module, metadata=meta, device=dev, path=path, half=False, extra=extra)
