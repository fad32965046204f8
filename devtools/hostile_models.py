"""Model files that misbehave on purpose, for the hostile-input tests and the sweep (devtools/hostile_sweep.py).

A model file is code: these run code a detector never should. Both carry the
brightness test model's metadata, so they load like any model.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from roof_detector.core.model_io import save_model

from .test_model import brightness_metadata


class EndlessNet(nn.Module):
    """A forward pass that never returns: a scripted loop whose condition stays true."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = (i + 1) % 1000
        return torch.sigmoid(x[:, :1])


def make_endless_torchscript(path: str) -> str:
    """A TorchScript model file whose forward pass loops for ever; returns the path."""
    return save_model(EndlessNet(), path, brightness_metadata())


def make_endless_onnx(path: str) -> str:
    """An ONNX model (loaded directly as ``--model X.onnx``) whose ``Loop`` never ends: no trip
    count and a condition that stays true. Needs the ``onnx`` package."""
    import onnx
    from onnx import TensorProto, helper

    def value(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    def constant(name, dtype, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [len(values)], values))

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "forever",
        [
            value("iter", TensorProto.INT64, []),
            value("cond_in", TensorProto.BOOL, []),
            value("v_in", TensorProto.FLOAT, None),
        ],
        [value("cond_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Constant", [], ["true"], value=helper.make_tensor("true", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["", "true", "image"], ["looped"], body=body),
        constant("starts", TensorProto.INT64, [0]),
        constant("ends", TensorProto.INT64, [1]),
        constant("axes", TensorProto.INT64, [1]),
        helper.make_node("Slice", ["looped", "starts", "ends", "axes"], ["first"]),
        helper.make_node("Sigmoid", ["first"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "endless",
        [value("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [value("probability", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"metadata.json": json.dumps(brightness_metadata()), "precision": "fp32"})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
