"""A model file is a program (issue 21): file-touching TorchScript is refused on load; checkpoints load
with ``weights_only=True`` (no pickled code runs)."""

import os

import pytest
import torch

from roof_detector.core.errors import ModelError
from roof_detector.core.model_io import load_model, read_metadata, save_model
from devtools.test_model import make_test_model


class FileWriter(torch.nn.Module):
    """Looks like a model; maps a file shared and writes into it on every call (0.2.0 ran it)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        victim = torch.from_file(self.target, True, 4, dtype=torch.uint8)
        victim.fill_(88)
        return torch.sigmoid(x[:, :1] + victim.float().sum() * 0)


def test_a_model_writing_to_a_file_is_refused_before_it_runs(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"keep")
    good = make_test_model(str(tmp_path / "good.pt"))
    evil = save_model(FileWriter(str(victim)), str(tmp_path / "evil.pt"), read_metadata(good))
    with pytest.raises(ModelError, match="aten::from_file.*trusted source"):
        load_model(evil, "cpu", backend="torch")
    with pytest.raises(ModelError, match="aten::from_file"):
        load_model(evil, "cpu")  # the ONNX path runs the TorchScript once to verify: refused before that too
    assert victim.read_bytes() == b"keep"
    load_model(good, "cpu", backend="torch")  # an ordinary model passes


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path):
    import inspect

    import roof_detector.core.training.export as export  # train --init-from loads through initial_network
    import roof_detector.core.training.train_state as train_state  # resuming from a checkpoint

    for module in (train_state, export):
        source = inspect.getsource(module)
        assert "weights_only=False" not in source and "weights_only=True" in source

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    ck = tmp_path / "ck.pt"
    torch.save({"best_state": {}, "payload": Payload()}, ck)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        torch.load(ck, map_location="cpu", weights_only=True)
    assert not (tmp_path / "pwned").exists()
