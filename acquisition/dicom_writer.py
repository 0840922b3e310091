"""DX (Digital X-Ray) Image Storage for the two frames of a stereo exposure.

Serves simulated and real frames alike: it reads only what a detector and the
exposure report give (:class:`simulator.frames.Frame`: stored pixels,
photometric interpretation, bits, imager pixel spacing, actual technique,
exposure id and time, nominal distances), never the true geometry.

What is written (DICOM PS3.3 A.26 DX IOD and the modules it lists):

- SOP class: DX Image Storage - For Presentation (1.2.840.10008.5.1.4.1.1.1.1)
  with a VOI LUT (window), or - For Processing (...1.1.1.1.1) without one
  (the VOI LUT module is required for one and forbidden for the other).
- Both views share Study, Series, Frame of Reference, AcquisitionNumber
  (the exposure id) and AcquisitionDateTime, and reference each other in
  ReferencedImageSequence with purpose of reference (DCM, 121315,
  "Other image of stereoscopic pair").
- Technique from the exposure report: KVP, XRayTubeCurrent(InuA),
  ExposureTime(InuS), Exposure and ExposureInuAs.
- ImagerPixelSpacing (detector front plane, never adjusted),
  DistanceSourceToDetector, DistanceSourceToPatient and
  EstimatedRadiographicMagnificationFactor = SID / SOD (PS3.3 C.8.11.7).
- Procedure code by region in ProcedureCodeSequence (CPT Category III
  0348T / 0349T / 0350T, coding scheme designator ``C4``, DICOM's name for
  CPT, PS3.16 Table 8-1) and the anatomy as SNOMED CT (``SCT``) codes.

Saved with ``enforce_file_format=True`` (File Meta Information, Explicit VR
Little Endian) and written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from acquisition.jsonio import write_bytes_atomic
from reconstruction.errors import InputError

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1.4.4"  # pydicom root + project suffix
IMPLEMENTATION_VERSION = "RSA_STATION_01"

# Region -> (CPT code, meaning); anatomy as SNOMED CT (CID 4031 common anatomic regions).
PROCEDURES = {
    "spine": ("0348T", "Radiostereometric analysis (RSA), spine"),
    "upper": ("0349T", "Radiostereometric analysis (RSA), upper extremity"),
    "lower": ("0350T", "Radiostereometric analysis (RSA), lower extremity"),
}
# The anatomy examined (study["anatomy"]) -> SNOMED CT code, meaning, fixed laterality.
ANATOMY = {
    "cervical": ("122494005", "Cervical spine", "U"),
    "lumbar": ("122496007", "Lumbar spine", "U"),
    "spine": ("421060004", "Spine", "U"),
    "shoulder": ("16982005", "Shoulder region structure", None),
    "elbow": ("127949000", "Elbow region structure", None),
    "upper": ("53120007", "Upper limb structure", None),
    "knee": ("72696002", "Knee region structure", None),
    "hip": ("29836001", "Hip region structure", None),
    "lower": ("61685007", "Lower limb structure", None),
}
# DICOM ViewPosition -> CID 4010 "DX View" (SNOMED CT).
VIEWS = {
    "AP": ("399348003", "SCT", "antero-posterior"),
    "PA": ("399300004", "SCT", "postero-anterior"),
    "LL": ("399173006", "SCT", "left lateral"),
    "RL": ("399198007", "SCT", "right lateral"),
}
# Lossless encodings pydicom can write with the installed plugins (pylibjpeg-openjpeg).
COMPRESSION = {"none": None, "rle": RLELossless, "jpeg2000": JPEG2000Lossless}
STEREO_PURPOSE = ("121315", "DCM", "Other image of stereoscopic pair")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ds(x: float) -> str:
    """A DS value of at most 16 characters."""
    s = f"{x:.6g}"
    return s if len(s) <= 16 else f"{x:.4e}"


def _da(dt: datetime) -> str:
    return dt.strftime("%Y%m%d")


def _tm(dt: datetime) -> str:
    return dt.strftime("%H%M%S.%f")


def _dt(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S.%f")


def _view_of(frame, index: int) -> str:
    return getattr(getattr(frame, "meta", None), "view", None) or "AB"[index]


def _by_view(frames) -> dict:
    """Frames keyed by view: a mapping as it is, a sequence by each frame's ``meta.view``."""
    if isinstance(frames, Mapping):
        return dict(frames)
    out = {_view_of(f, i): f for i, f in enumerate(frames)}
    if len(out) != len(frames):
        raise InputError("DX pair: two frames of the same view")
    return out


def make_uid(seed: Any | None, *parts: Any) -> str:
    """A UID, deterministic when ``seed`` is given (fixtures), else unique."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def window_for(pixels: np.ndarray, bits_stored: int) -> tuple[float, float]:
    """VOI window (centre, width) spanning the 0.5–99.5 percentiles of the image."""
    sub = pixels[::4, ::4]
    lo, hi = np.percentile(sub, [0.5, 99.5])
    width = max(float(hi - lo), 2.0)
    return float((lo + hi) / 2), width


def build_dx_dataset(
    frame,
    *,
    patient: Mapping[str, Any],
    study: Mapping[str, Any],
    sop_instance_uid: str,
    series_instance_uid: str,
    frame_of_reference_uid: str,
    for_presentation: bool = True,
    referenced: list[tuple[str, str]] = (),
    instance_number: int = 1,
    series_number: int = 1,
    manufacturer: str = "RSA Station",
    compression: str = "none",
) -> FileDataset:
    """One DX dataset from a frame (see the module docstring for the contents).

    ``compression``: ``"none"`` (Explicit VR Little Endian), ``"rle"`` (RLE
    Lossless) or ``"jpeg2000"`` (JPEG 2000 Lossless Only).
    """
    if compression not in COMPRESSION:
        raise InputError(
            f"DX compression: expected one of {', '.join(COMPRESSION)}, got {compression!r}"
        )
    m = frame.meta
    px = np.ascontiguousarray(frame.pixels)
    if px.ndim != 2 or px.dtype != np.uint16:
        raise InputError(
            f"frame {m.view}: expected a 2D uint16 pixel array, got {px.dtype} {px.shape}"
        )
    if px.shape != (m.rows, m.columns):
        raise InputError(
            f"frame {m.view}: pixels {px.shape} differ from rows x columns {(m.rows, m.columns)}"
        )
    if not 6 <= m.bits_stored <= 16:
        raise InputError(f"frame {m.view}: BitsStored must be 6..16 for DX, got {m.bits_stored}")
    sop_class = DX_FOR_PRESENTATION if for_presentation else DX_FOR_PROCESSING
    region = study.get("region")
    when: datetime = m.acquisition_datetime
    study_dt: datetime = study.get("datetime") or when

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = _da(when)
    ds.InstanceCreationTime = _tm(when)
    # Patient
    ds.PatientName = patient.get("name", "")
    ds.PatientID = patient.get("id", "")
    ds.PatientBirthDate = patient.get("birth_date", "")
    ds.PatientSex = patient.get("sex", "")
    # General Study
    ds.StudyInstanceUID = study["instance_uid"]
    ds.StudyDate = _da(study_dt)
    ds.StudyTime = _tm(study_dt)
    ds.ReferringPhysicianName = study.get("referring_physician", "")
    ds.StudyID = str(
        study.get("study_id") or study.get("exam_id") or study.get("accession_number") or "RSA"
    )[:16]
    ds.AccessionNumber = str(study.get("accession_number", ""))[:16]
    ds.StudyDescription = study.get("description", "Radiostereometric analysis")
    code = study.get("procedure_code")
    if code is None and region in PROCEDURES:
        code = PROCEDURES[region][0]
    if code:
        meaning = {c: m for c, m in PROCEDURES.values()}.get(code, "Radiostereometric analysis")
        ds.ProcedureCodeSequence = [_code(str(code), "C4", meaning)]
    # General Series + DX Series
    ds.Modality = "DX"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = _da(when)
    ds.SeriesTime = _tm(when)
    ds.SeriesDescription = f"RSA stereo pair, exposure {m.exposure_id}"
    ds.PresentationIntentType = "FOR PRESENTATION" if for_presentation else "FOR PROCESSING"
    laterality = study.get("laterality")
    # The procedure code names only the region; the anatomic region says which
    # part of it was examined, when the caller knows (else the whole region).
    anatomy = ANATOMY.get(study.get("anatomy") or "") or ANATOMY.get(region)
    # Frame of Reference: the cage frame, shared by the pair.
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = study.get("model", "RSA stereo station")
    ds.DeviceSerialNumber = m.detector_id
    ds.StationName = str(study.get("station_name", "RSA"))[:16]
    ds.SoftwareVersions = IMPLEMENTATION_VERSION
    # General Image / General Acquisition
    ds.InstanceNumber = int(instance_number)
    ds.PatientOrientation = list(m.patient_orientation) if m.patient_orientation else ["L", "F"]
    ds.ContentDate = _da(when)
    ds.ContentTime = _tm(when)
    ds.AcquisitionNumber = int(m.exposure_id)
    ds.AcquisitionDateTime = _dt(when)
    ds.AcquisitionDate = _da(when)
    ds.AcquisitionTime = _tm(when)
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.ImageComments = f"RSA view {m.view}"
    if referenced:
        items = []
        for cls, uid in referenced:
            it = Dataset()
            it.ReferencedSOPClassUID = cls
            it.ReferencedSOPInstanceUID = uid
            it.PurposeOfReferenceCodeSequence = [_code(*STEREO_PURPOSE)]
            items.append(it)
        ds.ReferencedImageSequence = items
    # Image Pixel + DX Image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = m.photometric
    ds.Rows, ds.Columns = int(m.rows), int(m.columns)
    ds.BitsAllocated = 16
    ds.BitsStored = int(m.bits_stored)
    ds.HighBit = int(m.bits_stored) - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = m.pixel_intensity_relationship
    ds.PixelIntensityRelationshipSign = int(m.pixel_intensity_sign)
    ds.RescaleIntercept = _ds(m.rescale_intercept)
    ds.RescaleSlope = _ds(m.rescale_slope)
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if m.photometric == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.QualityControlImage = "NO"
    # DX Anatomy Imaged
    ds.ImageLaterality = (anatomy[2] if anatomy and anatomy[2] else laterality) or "U"
    ds.AnatomicRegionSequence = [_code(anatomy[0], "SCT", anatomy[1])] if anatomy else []
    # DX Detector
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = m.detector_id
    ds.ImagerPixelSpacing = [_ds(v) for v in m.imager_pixel_spacing_mm]
    ds.DetectorElementSpacing = [_ds(v) for v in m.imager_pixel_spacing_mm]
    ds.DetectorActiveShape = "RECTANGLE"
    ds.DetectorActiveDimensions = [
        _ds(m.rows * m.imager_pixel_spacing_mm[0]),
        _ds(m.columns * m.imager_pixel_spacing_mm[1]),
    ]
    # DX Positioning
    ds.PositionerType = ""
    ds.ViewPosition = m.view_position or ""
    if m.view_position in VIEWS:
        ds.ViewCodeSequence = [_code(*VIEWS[m.view_position])]
    if m.nominal_sid_mm:
        ds.DistanceSourceToDetector = _ds(m.nominal_sid_mm)
    if m.nominal_sid_mm and m.nominal_sod_mm:
        ds.DistanceSourceToPatient = _ds(m.nominal_sod_mm)
        ds.EstimatedRadiographicMagnificationFactor = _ds(m.nominal_sid_mm / m.nominal_sod_mm)
    # X-Ray Generation (actual technique from the exposure report)
    t = m.technique
    kv, ma, ms = float(t["kv"]), float(t["ma"]), float(t["ms"])
    mas = float(t.get("mas", ma * ms / 1000.0))
    ds.KVP = _ds(kv)
    ds.XRayTubeCurrent = round(ma)
    ds.XRayTubeCurrentInuA = _ds(ma * 1000.0)
    ds.ExposureTime = round(ms)
    ds.ExposureTimeInuS = _ds(ms * 1000.0)
    ds.Exposure = round(mas)
    ds.ExposureInuAs = round(mas * 1000.0)
    if m.collimation_px is not None:
        r0, r1, c0, c1 = m.collimation_px
        ds.CollimatorShape = "RECTANGULAR"
        ds.CollimatorLeftVerticalEdge = int(c0)
        ds.CollimatorRightVerticalEdge = int(c1)
        ds.CollimatorUpperHorizontalEdge = int(r0)
        ds.CollimatorLowerHorizontalEdge = int(r1)
    # Acquisition Context (type 2: present, may be empty)
    ds.AcquisitionContextSequence = []
    if for_presentation:
        centre, width = window_for(px, m.bits_stored)
        ds.WindowCenter = _ds(centre)
        ds.WindowWidth = _ds(width)
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = px.astype("<u2", copy=False).tobytes()
    if COMPRESSION[compression] is not None:
        ds.compress(COMPRESSION[compression], px)
        ds.file_meta.TransferSyntaxUID = COMPRESSION[compression]
    return ds


def dx_pair_datasets(
    frames: Mapping[str, Any] | Sequence[Any],
    *,
    patient: Mapping[str, Any],
    study: Mapping[str, Any],
    for_presentation: bool = True,
    uid_seed: Any | None = None,
    series_number: int = 1,
    compression: str = "none",
) -> dict[str, FileDataset]:
    """The two linked DX datasets of a stereo pair, keyed by view.

    ``frames`` is a mapping view -> frame, or a sequence of frames (keyed by
    their ``meta.view``). ``study`` holds ``region`` ('spine' | 'upper' |
    'lower'), optionally ``anatomy`` (e.g. 'cervical', 'elbow', 'knee': the
    AnatomicRegionSequence; default: the whole region), ``procedure_code`` (default by region),
    ``instance_uid`` (else derived), ``laterality``, ``accession_number``,
    ``study_id`` (or ``exam_id``), ``description``, ``datetime``. ``None``
    values count as absent. ``uid_seed`` makes every UID
    deterministic (fixtures); None gives unique UIDs.
    """
    frames = _by_view(frames)
    views = sorted(frames)
    if not views:
        raise InputError("DX pair: no frames")
    patient = {k: ("" if v is None else v) for k, v in patient.items()}
    study = {k: v for k, v in study.items() if v is not None}
    first = frames[views[0]].meta
    key = (uid_seed, first.exposure_id, first.acquisition_datetime.isoformat())
    study = dict(study)
    study.setdefault("instance_uid", make_uid(uid_seed, "study", *key))
    series_uid = make_uid(uid_seed, "series", *key, for_presentation)
    for_uid = make_uid(uid_seed, "frame-of-reference", *key)
    sop_class = DX_FOR_PRESENTATION if for_presentation else DX_FOR_PROCESSING
    sop_uids = {v: make_uid(uid_seed, "sop", *key, for_presentation, v) for v in views}
    out = {}
    for i, v in enumerate(views):
        refs = [(sop_class, sop_uids[o]) for o in views if o != v]
        out[v] = build_dx_dataset(
            frames[v],
            patient=patient,
            study=study,
            sop_instance_uid=sop_uids[v],
            series_instance_uid=series_uid,
            frame_of_reference_uid=for_uid,
            for_presentation=for_presentation,
            referenced=refs,
            instance_number=i + 1,
            series_number=series_number,
            compression=compression,
        )
    return out


def dataset_bytes(ds: FileDataset) -> bytes:
    """The Part 10 file bytes of ``ds``."""
    from io import BytesIO

    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_dx_pair(
    frames: Mapping[str, Any] | Sequence[Any],
    paths: Mapping[str, str | Path] | Sequence[str | Path],
    *,
    patient: Mapping[str, Any],
    study: Mapping[str, Any],
    for_presentation: bool = True,
    uid_seed: Any | None = None,
    series_number: int = 1,
    compression: str = "none",
) -> dict[str, FileDataset]:
    """Write the stereo pair as two DX files (atomically); returns the datasets by view.

    ``frames`` and ``paths``: mappings by view, or sequences in the same order
    (frames keyed by their ``meta.view``). See :func:`dx_pair_datasets`.
    """
    frames = _by_view(frames)
    if not isinstance(paths, Mapping):
        # A sequence of paths goes with the frames in the order given.
        paths = dict(zip(list(frames), paths, strict=True))
    missing = sorted(set(frames) - set(paths))
    if missing:
        raise InputError(f"DX pair: no output path for view(s) {', '.join(missing)}")
    datasets = dx_pair_datasets(
        frames,
        patient=patient,
        study=study,
        for_presentation=for_presentation,
        uid_seed=uid_seed,
        series_number=series_number,
        compression=compression,
    )
    for v, ds in datasets.items():
        write_bytes_atomic(paths[v], dataset_bytes(ds))
    return datasets
