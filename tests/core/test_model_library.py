"""The model library's file operations: list, rename, delete, import, export."""

import os

import pytest

from roof_detector.core.model_io import read_metadata
from roof_detector.core.model_library import (
    ModelLibraryError,
    delete_model,
    export_model_file,
    file_stem,
    import_model,
    list_models,
    new_model_path,
    rename_model,
    validation_iou,
)
from devtools.test_model import make_test_model


def _model(path, **extra):
    return make_test_model(str(path), extra_metadata=extra or None)


@pytest.fixture()
def library(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    _model(
        lib / "alpha.pt",
        name="Alpha",
        version="1.2.0",
        metrics={"val_before": {"iou": 0.5}, "val_after": {"iou": 0.71}},
    )
    (lib / "alpha_curves.png").write_bytes(b"png")
    (lib / "alpha_metrics.json").write_text("{}")
    _model(lib / "Beta.pt", metrics={"val": {"pooled": {"iou": 0.66}, "oam": {"iou": 0.6}}})
    (lib / "broken.pt").write_bytes(b"not a model")
    (lib / "notes.txt").write_text("ignored")
    return lib


def test_list_reads_metadata_and_flags_broken_files(library):
    entries = list_models(str(library))
    assert [e.file_name for e in entries] == ["alpha.pt", "Beta.pt", "broken.pt"]
    alpha, beta, broken = entries
    assert (alpha.name, alpha.version, alpha.gsd_m, alpha.val_iou, alpha.ok) == ("Alpha", "1.2.0", 0.5, 0.71, True)
    assert beta.name == "brightness-test-model" and beta.val_iou == 0.66
    assert not broken.ok and "not a TorchScript model" in broken.error and broken.val_iou is None
    assert list_models(str(library / "absent")) == []


def test_validation_iou_from_each_writer():
    assert validation_iou({"metrics": {"val_after": {"iou": 0.8}, "val_before": {"iou": 0.1}}}) == 0.8
    assert validation_iou({"metrics": {"val": {"pooled": {"iou": 0.7}}}}) == 0.7
    assert validation_iou({"metrics": {"val": {"val_iou": 0.6, "val_x_iou": 0.5}}}) == 0.6
    assert validation_iou({"metrics": {"val": {"oam": {"iou": 0.4}}}}) == 0.4
    assert validation_iou({}) is None and validation_iou({"metrics": "x"}) is None


def test_file_stem_and_new_model_path(library):
    assert file_stem(" My model: Lyon 2023 ") == "My_model_Lyon_2023"
    assert file_stem("city.pt") == "city"
    with pytest.raises(ModelLibraryError, match="not usable as a model name"):
        file_stem(" /// ")
    assert new_model_path(str(library), "gamma") == str(library / "gamma.pt")
    with pytest.raises(ModelLibraryError, match="already holds a model file Beta.pt"):
        new_model_path(str(library), "beta")  # case-insensitive clash


def test_rename_moves_file_side_files_and_metadata_name(library):
    new = rename_model(str(library / "alpha.pt"), "Lyon centre")
    assert new == str(library / "Lyon_centre.pt")
    assert sorted(os.listdir(library)) == [
        "Beta.pt",
        "Lyon_centre.pt",
        "Lyon_centre_curves.png",
        "Lyon_centre_metrics.json",
        "broken.pt",
        "notes.txt",
    ]
    meta = read_metadata(new)
    assert meta["name"] == "Lyon centre" and meta["version"] == "1.2.0" and meta["metrics"]["val_after"]["iou"] == 0.71
    from roof_detector.core.model_io import load_model

    assert load_model(new, device="cpu").threshold == 0.5
    # same file name, new metadata name only
    assert rename_model(new, "Lyon_centre") == new and read_metadata(new)["name"] == "Lyon_centre"


def test_rename_refuses_clashes_and_invalid_files(library):
    with pytest.raises(ModelLibraryError, match="already holds Beta.pt"):
        rename_model(str(library / "alpha.pt"), "BETA")
    with pytest.raises(ModelLibraryError, match="Cannot rename broken.pt"):
        rename_model(str(library / "broken.pt"), "fixed")
    with pytest.raises(ModelLibraryError, match="not found"):
        rename_model(str(library / "nope.pt"), "x")
    assert (library / "alpha.pt").exists() and (library / "broken.pt").exists()


def test_delete_removes_model_and_side_files(library):
    removed = delete_model(str(library / "alpha.pt"))
    assert len(removed) == 3
    assert sorted(os.listdir(library)) == ["Beta.pt", "broken.pt", "notes.txt"]
    delete_model(str(library / "broken.pt"))  # an invalid file can still be deleted
    with pytest.raises(ModelLibraryError, match="not found"):
        delete_model(str(library / "alpha.pt"))


def test_import_validates_copies_and_refuses_clashes(library, tmp_path):
    outside = tmp_path / "downloads"
    outside.mkdir()
    src = _model(outside / "paris.pt", name="Paris")
    (outside / "paris_curves.png").write_bytes(b"png")
    new = import_model(src, str(library))
    assert new == str(library / "paris.pt") and read_metadata(new)["name"] == "Paris"
    assert (library / "paris_curves.png").exists() and os.path.exists(src)
    with pytest.raises(ModelLibraryError, match="already holds a model file paris.pt"):
        import_model(src, str(library))
    assert import_model(src, str(library), name="paris 2") == str(library / "paris_2.pt")
    bad = outside / "fake.pt"
    bad.write_bytes(b"PK nonsense")
    with pytest.raises(ModelLibraryError, match="Cannot import fake.pt: .*not a TorchScript model"):
        import_model(str(bad), str(library))
    import zipfile

    with zipfile.ZipFile(outside / "nometa.pt", "w") as zf:
        zf.writestr("nometa/data.pkl", b"x")
    with pytest.raises(ModelLibraryError, match="without Roof Detector metadata"):
        import_model(str(outside / "nometa.pt"), str(library))
    assert not (library / "fake.pt").exists() and not (library / "nometa.pt").exists()
    # into a library folder that does not exist yet
    assert import_model(src, str(tmp_path / "new_lib")) == str(tmp_path / "new_lib" / "paris.pt")


def test_export_copies_out(library, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert export_model_file(str(library / "alpha.pt"), str(out)) == str(out / "alpha.pt")
    assert read_metadata(out / "alpha.pt")["name"] == "Alpha"
    with pytest.raises(ModelLibraryError, match="already exists"):
        export_model_file(str(library / "Beta.pt"), str(out / "alpha.pt"))
    assert export_model_file(str(library / "Beta.pt"), str(out / "alpha.pt"), overwrite=True)
    assert read_metadata(out / "alpha.pt")["name"] == "brightness-test-model"
    assert export_model_file(str(library / "alpha.pt"), str(out / "shared")) == str(out / "shared.pt")
    with pytest.raises(ModelLibraryError, match="does not exist"):
        export_model_file(str(library / "alpha.pt"), str(tmp_path / "no" / "x.pt"))
    with pytest.raises(ModelLibraryError, match="Cannot export broken.pt"):
        export_model_file(str(library / "broken.pt"), str(out))
    assert sorted(os.listdir(out)) == ["alpha.pt", "shared.pt"]
