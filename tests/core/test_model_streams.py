"""Two model calls in flight on the CPU (ONNX Runtime): same result, calls overlap, a cancel stops both."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from roof_detector.core import onnx_twin
from roof_detector.core.errors import Cancelled
from roof_detector.core.interruptible import stuck_calls
from roof_detector.core.model_io import BUNDLED_MODEL_PATH, load_model
from roof_detector.core.onnx_twin import OnnxModule, cpu_streams
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from devtools.test_model import make_test_model

from .synthetic_rasters import rect_scene


def test_streams_follow_the_cores_and_the_setting(monkeypatch):
    assert [cpu_streams(c) for c in (1, 2, 3, 16)] == [1, 2, 2, 2]
    monkeypatch.setattr(onnx_twin, "CPU_STREAMS", "1")
    assert cpu_streams(16) == 1
    monkeypatch.setattr(onnx_twin, "CPU_STREAMS", "4")
    assert [cpu_streams(c) for c in (2, 8)] == [2, 4]
    monkeypatch.setattr(onnx_twin, "CPU_STREAMS", "two")  # not a number: the default
    assert cpu_streams(8) == 2


def test_a_session_gives_each_stream_its_share_of_the_threads(monkeypatch):
    twin = str(BUNDLED_MODEL_PATH.with_suffix(".onnx"))

    def threads(module):
        return module.session.get_session_options().intra_op_num_threads

    two = OnnxModule(twin, threads=2)
    assert two.streams == 2 and threads(two) == 1
    eight = OnnxModule(twin, threads=8)
    assert eight.streams == 2 and threads(eight) == 4
    one = OnnxModule(twin, threads=1)
    assert one.streams == 1 and threads(one) == 1
    monkeypatch.setattr(onnx_twin, "CPU_STREAMS", "1")  # the release-0.2 way: one run on every thread
    old = OnnxModule(twin, threads=2)
    assert old.streams == 1 and threads(old) == 2


class _BrightModule:
    """A numpy (ONNX-Runtime-like) module: building where the tile is bright; records calls in flight."""

    numpy_io = True

    def __init__(self, streams, gate=None):
        self.streams = streams
        self.gate = gate  # an Event the calls wait on (None: run at once)
        self.lock = threading.Lock()
        self.running = self.most_running = self.calls = 0
        self.stopped = 0

    def run_numpy(self, x):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(30)
            else:
                time.sleep(0.02)  # long enough for the next call to start
            grey = x.mean(axis=1, keepdims=True)
            return (1.0 / (1.0 + np.exp(-40.0 * (grey - 0.5)))).astype(np.float32)
        finally:
            with self.lock:
                self.running -= 1

    def stop_runs(self):
        self.stopped += 1
        if self.gate is not None:
            self.gate.set()


@pytest.fixture()
def torch_model(tmp_path):
    return load_model(make_test_model(str(tmp_path / "m.pt")), "cpu", backend="torch")


def test_two_calls_in_flight_give_the_same_buildings_as_one(tmp_path, torch_model):
    rects = [(20 + 60 * i, 20 + 70 * j, 50 + 60 * i, 60 + 70 * j) for i in range(5) for j in range(6)]
    path = rect_scene(tmp_path / "r.tif", rects, shape=(320, 440))
    results = {}
    for streams in (1, 2):
        module = _BrightModule(streams)
        model = dataclasses.replace(torch_model, module=module)
        results[streams] = detect_buildings(path, DetectOptions(batch_size=1), model=model)
        assert module.most_running == streams
        assert module.calls == results[streams].stats["tiles"] > 2
    assert len(results[1].buildings) == len(rects)
    assert [b.geometry.wkb for b in results[2].buildings] == [b.geometry.wkb for b in results[1].buildings]
    assert [b.confidence for b in results[2].buildings] == [b.confidence for b in results[1].buildings]


def test_a_cancel_stops_every_call_in_flight(tmp_path, torch_model):
    path = rect_scene(tmp_path / "c.tif", [(20, 20, 60, 80)], shape=(320, 440))
    module = _BrightModule(2, gate=threading.Event())
    model = dataclasses.replace(torch_model, module=module)
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        detect_buildings(
            path, DetectOptions(batch_size=1), model=model, is_cancelled=lambda: time.perf_counter() - t0 > 0.3
        )
    assert time.perf_counter() - t0 < 3.0
    assert module.most_running == 2  # both calls were running when the cancel came
    assert module.stopped >= 1  # and were asked to stop (the gate opened: they end)
    assert stuck_calls(grace_s=5.0) == 0
