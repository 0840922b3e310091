"""A follow-up exam on the real simulator and reconstruction: migration against the
reference exam is computed before the patient leaves, and matches the truth (the
simulated patient did not move between the two exams: no migration)."""

import numpy as np

from acquisition.service.headless import expose, run_exam, wait_state
from acquisition.service.wiring import build_runtime


def test_follow_up_migration_against_reference(tmp_path):
    rt = build_runtime(tmp_path, simulate=True, controller="sim://followup", full_resolution=False)
    try:
        rt.start()
        ref = run_exam(rt, "lower", patient_id="MIG-1")
        assert ref["attempts"][-1]["status"] == "processed"
        rt.accept("tech", ref["id"])
        fu = rt.register(
            "tech",
            {
                "patient_id": "MIG-1",
                "patient_name": "Follow^Up",
                "region": "lower",
                "reference_exam_id": ref["id"],
            },
        )
        rt.set_technique("tech", fu["id"], fu["technique"])
        rt.arm("tech", fu["id"])
        expose(rt, "tech", fu["id"])
        wait_state(rt, fu["id"], ("review",))
        att = rt.store.exam(fu["id"])["attempts"][-1]
        m = att["migration"]
        assert m["method"] == "consistent-marker"
        assert m["motion"] is not None, m
        # same patient, same pose: the true migration is zero
        assert m["motion"]["mtpm_mm"] < 0.3
        assert np.linalg.norm(m["motion"]["translation_mm"]) < 0.3
        for s in m["segments"].values():
            assert s["markers_matched"] >= 3 and s["mean_error_mm"] < 0.35
        done = rt.accept("tech", fu["id"])
        assert done["migration"] == m
        assert done["reference_exam_id"] == ref["id"]
    finally:
        rt.close()
