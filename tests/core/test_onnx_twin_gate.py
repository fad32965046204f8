"""The int8 twin's held-out gate: its decision and the counts it prints (scores stubbed: the
held-out data are not in CI; the real gate's figures are in models/int8_calibration_rule.md)."""

import json

import pytest

from devtools import heldout, onnx_twin, onnx_twin_cli
from roof_detector.core import onnx_twin as core_twin
from roof_detector.core.errors import RoofDetectorError


def _fig(iou, predicted, matched, reference=112):
    return {"pixel_iou": iou, "predicted": predicted, "reference": reference, "matched": matched}


@pytest.fixture
def gate(monkeypatch, tmp_path):
    twin = tmp_path / "int8.onnx"
    twin.write_bytes(b"twin")
    recorded = {}
    monkeypatch.setattr(onnx_twin, "make_twin", lambda model, out, precision: {"path": out})
    monkeypatch.setattr(core_twin, "read_twin_properties", lambda path: {})
    monkeypatch.setattr(onnx_twin, "set_properties", lambda path, props: recorded.update(props))

    def run(fp32, int8):
        scores = iter([fp32, int8])
        # the tuning scenes: 600 / 680 / 430 with either model
        tuning_figs = {"tuning_oam1_z19": _fig(0.7, 400, 300, 500), "tuning_inria_val": _fig(0.7, 200, 130, 180)}
        monkeypatch.setattr(heldout, "score_all", lambda *a, tuning=False, **k: tuning_figs if tuning else next(scores))
        return onnx_twin_cli.heldout_gate("m.pt", str(twin), "data"), recorded, twin

    return run


def test_gate_passes_the_same_buildings_and_records_the_counts(gate, capsys):
    record, props, twin = gate({"oam_area4_z19": _fig(0.58, 49, 32)}, {"oam_area4_z19": _fig(0.59, 49, 32)})
    line = capsys.readouterr().out
    assert "buildings predicted / reference / matched fp32 49/112/32, int8 49/112/32" in line
    assert record["oam_area4_z19"]["int8_predicted_reference_matched"] == [49, 112, 32]
    assert json.loads(props["heldout"])["oam_area4_z19"]["delta_object_f1"] == 0.0
    assert twin.exists()
    assert "fp32 600/680/430/0.6719, int8 600/680/430/0.6719 (recorded, not gating)" in line
    assert record["tuning_pooled"] == {"fp32": [600, 680, 430, 0.6719], "int8": [600, 680, 430, 0.6719]}


def test_gate_refuses_one_building_fewer_and_keeps_no_candidate(gate, capsys, tmp_path):
    # 49 / 32 vs 49 / 31 of 112 buildings: object F1 -0.0124, one building is more than the 0.01
    with pytest.raises(RoofDetectorError, match="oam_area4_z19"):
        gate({"oam_area4_z19": _fig(0.58, 49, 32)}, {"oam_area4_z19": _fig(0.59, 49, 31)})
    out = capsys.readouterr().out
    assert "(-0.0124; buildings predicted / reference / matched fp32 49/112/32, int8 49/112/31)" in out
    assert not (tmp_path / "int8.onnx").exists()  # the candidate; the shipped twin is elsewhere
