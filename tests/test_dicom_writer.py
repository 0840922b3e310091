"""DX writer: conformance (dciodvfy, dcentvfy), the stereo link, technique and geometry tags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from acquisition.dicom_writer import (
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    write_dx_pair,
)
from reconstruction.errors import InputError
from reconstruction.image import to_display
from simulator.exam import simulate_exam

PATIENT = {"name": "TEST^KNEE", "id": "P-001", "birth_date": "19560312", "sex": "F"}


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} (Debian dicom3tools) is required: `make test` installs it"
    return path


def _problems(cmd: list[str]) -> list[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith(("Error", "Warning"))]


@pytest.fixture(scope="module")
def exams():
    return {
        r: simulate_exam(r, 6, full_resolution=False, photometric=p, collimation=c)
        for r, p, c in (
            ("spine", "MONOCHROME2", None),
            ("upper", "MONOCHROME1", 0.8),
            ("lower", "MONOCHROME2", None),
        )
    }


def _write(exam, folder: Path, for_presentation=True, seed="t", anatomy=None):
    paths = {v: folder / f"{v}.dcm" for v in "AB"}
    ds = write_dx_pair(
        exam.frames,
        paths,
        patient=PATIENT,
        study={
            "region": exam.region,
            "laterality": "R",
            "accession_number": "A1",
            "anatomy": anatomy,
        },
        for_presentation=for_presentation,
        uid_seed=seed,
    )
    return paths, ds


@pytest.mark.parametrize("region", ["spine", "upper", "lower"])
@pytest.mark.parametrize("for_presentation", [True, False])
def test_dciodvfy_and_dcentvfy_are_clean(exams, tmp_path, region, for_presentation):
    paths, _ = _write(exams[region], tmp_path, for_presentation)
    for p in paths.values():
        assert _problems([_tool("dciodvfy"), str(p)]) == []
    assert _problems([_tool("dcentvfy"), str(paths["A"]), str(paths["B"])]) == []


@pytest.mark.parametrize(
    ("region", "anatomy", "code"),
    [
        ("spine", "cervical", "122494005"),
        ("spine", None, "421060004"),
        ("upper", "elbow", "127949000"),
        ("lower", "knee", "72696002"),
    ],
)
def test_anatomic_region_names_the_part_examined(exams, tmp_path, region, anatomy, code):
    paths, _ = _write(exams[region], tmp_path, anatomy=anatomy)
    ds = pydicom.dcmread(paths["A"])
    (anat,) = ds.AnatomicRegionSequence
    assert (anat.CodeValue, anat.CodingSchemeDesignator) == (code, "SCT")
    assert _problems([_tool("dciodvfy"), str(paths["A"])]) == []


def test_the_checkers_do_catch_problems(exams, tmp_path):
    """A file with a missing type-1 attribute is flagged, so the clean result means something."""
    paths, _ = _write(exams["lower"], tmp_path)
    ds = pydicom.dcmread(paths["A"])
    del ds.PresentationLUTShape
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    assert any("Error" in ln for ln in _problems([_tool("dciodvfy"), str(tmp_path / "bad.dcm")]))
    ds = pydicom.dcmread(paths["B"])
    ds.PatientName = "OTHER^NAME"
    ds.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    assert _problems([_tool("dcentvfy"), str(paths["A"]), str(tmp_path / "other.dcm")])


def test_pair_is_linked_and_tags_come_from_the_frames(exams, tmp_path):
    exam = exams["lower"]
    paths, _ = _write(exam, tmp_path)
    a, b = (pydicom.dcmread(paths[v]) for v in "AB")
    assert a.SOPClassUID == b.SOPClassUID == DX_FOR_PRESENTATION
    for kw in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "AcquisitionNumber",
        "AcquisitionDateTime",
        "PatientID",
    ):
        assert a.get(kw) == b.get(kw), kw
    assert a.SOPInstanceUID != b.SOPInstanceUID
    for me, other in ((a, b), (b, a)):
        (ref,) = me.ReferencedImageSequence
        assert ref.ReferencedSOPInstanceUID == other.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == other.SOPClassUID
        (purpose,) = ref.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121315", "DCM")
    (proc,) = a.ProcedureCodeSequence
    assert proc.CodeValue == "0350T"
    (anat,) = a.AnatomicRegionSequence
    assert anat.CodingSchemeDesignator == "SCT"
    for v, ds in (("A", a), ("B", b)):
        m = exam.frames[v].meta
        t = m.technique
        assert float(ds.KVP) == pytest.approx(t["kv"], abs=1e-3)
        assert ds.XRayTubeCurrent == round(t["ma"])
        assert float(ds.XRayTubeCurrentInuA) == pytest.approx(t["ma"] * 1000, rel=1e-5)
        assert ds.ExposureTime == round(t["ms"])
        assert ds.ExposureInuAs == round(t["mas"] * 1000)
        assert ds.Exposure == round(t["mas"])
        assert [float(x) for x in ds.ImagerPixelSpacing] == list(m.imager_pixel_spacing_mm)
        sid, sod = float(ds.DistanceSourceToDetector), float(ds.DistanceSourceToPatient)
        assert sid == pytest.approx(m.nominal_sid_mm, rel=1e-5)
        assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(
            sid / sod, rel=1e-5
        )
        assert 1.1 < sid / sod < 1.5
        assert ds.AcquisitionNumber == m.exposure_id
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert "WindowCenter" in ds and ds.PresentationLUTShape == "IDENTITY"
        assert np.array_equal(ds.pixel_array, exam.frames[v].pixels)
        assert ds.BitsStored == m.bits_stored and ds.PhotometricInterpretation == m.photometric


def test_for_processing_and_monochrome1(exams, tmp_path):
    exam = exams["upper"]
    paths, _ = _write(exam, tmp_path, for_presentation=False)
    ds = pydicom.dcmread(paths["A"])
    assert ds.SOPClassUID == DX_FOR_PROCESSING
    assert ds.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PresentationLUTShape == "INVERSE"
    assert ds.ProcedureCodeSequence[0].CodeValue == "0349T"
    assert ds.CollimatorShape == "RECTANGULAR"
    # Read back, markers are bright after the photometric handling.
    raw = exam.frames["A"].to_raw_image()
    disp = to_display(raw)
    b = next(b for b in exam.truth["beads"] if b["visible"]["A"])
    r, c = (round(x) for x in b["image_px"]["A"])
    assert disp[r, c] > np.median(disp[r - 6 : r + 7, c - 6 : c + 7])
    assert np.array_equal(ds.pixel_array, raw.pixels)


def test_same_seed_gives_the_same_file_bytes(exams, tmp_path):
    exam = exams["spine"]
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    p1, _ = _write(exam, tmp_path / "1", seed="s")
    p2, _ = _write(exam, tmp_path / "2", seed="s")
    for v in "AB":
        assert p1[v].read_bytes() == p2[v].read_bytes()
    p3, _ = _write(exam, tmp_path / "1", seed=None)
    assert pydicom.dcmread(p3["A"]).StudyInstanceUID != pydicom.dcmread(p2["A"]).StudyInstanceUID


def test_sequences_none_values_and_explicit_procedure_code(exams, tmp_path):
    exam = exams["spine"]
    paths = [tmp_path / "first.dcm", tmp_path / "second.dcm"]
    ds = write_dx_pair(
        [exam.frames["A"], exam.frames["B"]],
        paths,
        patient={"id": "P-9", "name": "DOE^JANE", "birth_date": None},
        study={"exam_id": 42, "attempt": 1, "procedure_code": "0348T", "region": "spine"},
    )
    a = pydicom.dcmread(paths[0])
    assert a.SOPInstanceUID == ds["A"].SOPInstanceUID and a.ImageComments == "RSA view A"
    assert a.PatientBirthDate == "" and a.StudyID == "42"
    assert a.ProcedureCodeSequence[0].CodeValue == "0348T"
    assert _problems([_tool("dciodvfy"), str(paths[0])]) == []
    assert _problems([_tool("dcentvfy"), *map(str, paths)]) == []


@pytest.mark.parametrize("compression", ["rle", "jpeg2000"])
def test_lossless_compression_round_trips_and_stays_conformant(exams, tmp_path, compression):
    exam = exams["upper"]
    paths = {v: tmp_path / f"{v}.dcm" for v in "AB"}
    write_dx_pair(
        exam.frames, paths, patient=PATIENT, study={"region": "upper"}, compression=compression
    )
    for v, p in paths.items():
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(ds.pixel_array, exam.frames[v].pixels)
        assert _problems([_tool("dciodvfy"), str(p)]) == []
    assert _problems([_tool("dcentvfy"), *map(str, paths.values())]) == []


def test_bad_frames_are_input_errors(exams, tmp_path):
    exam = exams["lower"]
    with pytest.raises(InputError, match="no output path"):
        write_dx_pair(exam.frames, {"A": tmp_path / "a.dcm"}, patient=PATIENT, study={})
    from dataclasses import replace

    bad = {"A": replace(exam.frames["A"], pixels=exam.frames["A"].pixels[:-1])}
    with pytest.raises(InputError, match="rows x columns"):
        write_dx_pair(bad, {"A": tmp_path / "a.dcm"}, patient=PATIENT, study={})
