"""PACS export: the used images of an accepted exam go to a real Orthanc by C-STORE
(Debian's Orthanc on free loopback ports with a temporary storage folder)."""

import json
import shutil
import subprocess
import time

import httpx
import pytest

from acquisition.service.headless import run_exam
from acquisition.service.pacs import PacsNode
from acquisition.service.testing import free_port
from acquisition.service.wiring import build_runtime
from reconstruction.errors import InputError

ORTHANC = "/usr/sbin/Orthanc"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not shutil.which(ORTHANC):
        pytest.skip("Orthanc is not installed")
    d = tmp_path_factory.mktemp("orthanc")
    dicom, http = free_port(), free_port()
    cfg = {
        "Name": "rsa-test",
        "StorageDirectory": str(d / "db"),
        "IndexDirectory": str(d / "db"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    (d / "orthanc.json").write_text(json.dumps(cfg))
    log = open(d / "orthanc.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([ORTHANC, str(d / "orthanc.json")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http}"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/system", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("Orthanc did not start")
    yield f"ORTHANC@127.0.0.1:{dicom}", url
    proc.terminate()
    proc.wait(10)
    log.close()


def test_accepted_exam_is_stored_on_the_pacs(tmp_path, orthanc):
    node, url = orthanc
    rt = build_runtime(
        tmp_path, simulate=True, controller="sim://pacs", full_resolution=False, pacs=node
    )
    try:
        rt.start()
        exam = run_exam(rt, "lower", patient_id="PACS-1")
        rt.accept("tech", exam["id"])
        rt.wait_idle(exam["id"], 60)
        done = rt.store.exam(exam["id"])
        assert any(e.action == "pacs_sent" for e in rt.store.audit_entries(exam["id"]))
        # an unreachable PACS: recorded and audited, the exam stays completed
        rt.pacs = PacsNode("NOBODY", "127.0.0.1", free_port())
        failed = rt.export("tech", exam["id"])
        assert failed["status"] == "failed" and "association not established" in failed["error"]
        again = rt.store.exam(exam["id"])
        assert again["state"] == "completed" and again["pacs"]["status"] == "failed"
        assert rt.store.audit_entries(exam["id"])[-1].action == "pacs_failed"
    finally:
        rt.close()
    assert done["pacs"]["status"] == "sent", done["pacs"]
    sent = {i["sop_instance_uid"] for i in done["pacs"]["instances"]}
    assert len(sent) == 2
    found = set()
    for oid in httpx.get(url + "/instances").json():
        tags = httpx.get(f"{url}/instances/{oid}/simplified-tags").json()
        if tags["PatientID"] == "PACS-1":
            found.add(tags["SOPInstanceUID"])
            assert tags["Modality"] == "DX"
    assert found == sent


def test_pacs_node_parsing():
    assert str(PacsNode.parse("ORTHANC@127.0.0.1:4242")) == "ORTHANC@127.0.0.1:4242"
    for bad in ("ORTHANC", "A@host", "@h:1", "A@h:0", "WAYTOOLONGAETITLE1@h:1"):
        with pytest.raises(InputError, match="--pacs"):
            PacsNode.parse(bad)
