"""Sending the accepted images to the PACS: DICOM C-STORE (PS3.4 Annex B) with pynetdicom.

Only the presentation contexts the files need are requested (one per SOP
class, with the file's own transfer syntax plus Explicit VR Little Endian),
so the association stays small and a context the peer refuses is reported by
name. A PACS destination is written ``AE_TITLE@HOST:PORT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconstruction.errors import InputError

CALLING_AE = "RSA_STATION"


@dataclass(frozen=True)
class PacsNode:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PacsNode:
        try:
            ae, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            node = cls(ae, host, int(port))
        except ValueError:
            raise InputError(f"--pacs {text!r}: expected AE_TITLE@HOST:PORT") from None
        if not 1 <= len(ae) <= 16 or not 0 < node.port < 65536:
            raise InputError(f"--pacs {text!r}: AE title 1..16 characters, port 1..65535")
        return node

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class PacsError(RuntimeError):
    """The PACS could not be reached or refused an image."""


def send(node: PacsNode, paths: list[str | Path], timeout: float = 30.0) -> list[dict]:
    """C-STORE every file to ``node``; returns one ``{"sop_instance_uid", "status"}`` per file.

    Raises :class:`PacsError` when the association fails or any store does not
    succeed (status 0x0000; warnings 0xB000-0xB007 count as stored).
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    wanted: dict[str, set[str]] = {}
    for ds in datasets:
        wanted.setdefault(ds.SOPClassUID, set()).update(
            {ds.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian}
        )
    for sop, syntaxes in wanted.items():
        ae.add_requested_context(sop, sorted(syntaxes))
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        raise PacsError(f"PACS {node}: association not established (unreachable or rejected)")
    out = []
    try:
        for p, ds in zip(paths, datasets, strict=True):
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted presentation context for it
                raise PacsError(f"PACS {node}: {Path(p).name}: {exc}") from None
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"PACS {node}: {Path(p).name}: no answer to C-STORE")
            if code != 0x0000 and not 0xB000 <= code <= 0xB007:
                raise PacsError(f"PACS {node}: {Path(p).name}: C-STORE status 0x{code:04X}")
            out.append({"sop_instance_uid": str(ds.SOPInstanceUID), "status": f"0x{code:04X}"})
    finally:
        assoc.release()
    return out
