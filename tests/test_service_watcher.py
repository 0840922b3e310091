"""``--detectors DIR``: the station takes the DICOM files a detector console drops into a
folder. Here the console is played by a trigger listener on the virtual controller
that renders each exposure and writes the pair into DIR/A and DIR/B."""

import hashlib

from acquisition.dicom_writer import write_dx_pair
from acquisition.jsonio import write_json
from acquisition.service.headless import run_exam
from acquisition.service.wiring import build_runtime
from simulator.controller import get_controller
from simulator.exam import simulate_exam


def test_folder_watcher_exam(tmp_path):
    drop = tmp_path / "console"
    (drop / "A").mkdir(parents=True)
    (drop / "B").mkdir()
    probe = simulate_exam("upper", 5, views=(), full_resolution=False)
    write_json(tmp_path / "station.json", probe.station)
    write_json(tmp_path / "cage.json", probe.cage)
    written = {}

    def console(record):  # renders what the tubes actually delivered, writes the files
        ex = simulate_exam(
            "upper",
            5,
            full_resolution=False,
            phantom=probe.phantom,
            reposition=False,
            technique={v: record["tubes"][v] for v in "AB"},
            exposure_id=record["exposure_id"],
            exposure_seed=record["exposure_id"],
        )
        paths = {v: drop / v / f"img-{record['exposure_id']}.dcm" for v in "AB"}
        write_dx_pair(ex.frames, paths, patient={"id": "C1"}, study={"region": "upper"})
        written.update(paths)

    remove = get_controller("watch").add_trigger_listener(console)
    rt = build_runtime(
        tmp_path / "data",
        controller="sim://watch",
        detectors=str(drop),
        station=str(tmp_path / "station.json"),
        cage=str(tmp_path / "cage.json"),
    )
    try:
        rt.start()
        assert rt.status()["detectors"]["A"]["source"] == f"folder {drop}"
        exam = run_exam(rt, "upper", patient_id="C1")
    finally:
        rt.close()
        remove()
    att = exam["attempts"][-1]
    assert att["status"] == "processed", att["error"]
    assert att["result"]["qc"]["checks"]
    for v in "AB":  # the console's file is kept byte for byte
        kept = att["images"][v]
        assert kept["sha256"] == hashlib.sha256(written[v].read_bytes()).hexdigest()
        assert att["cage_checks"][v]["cage_markers_found"] > 0
