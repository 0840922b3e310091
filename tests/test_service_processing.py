"""The station exam result: the exposure's tube skew joins the reconstruction's QC."""

import asyncio

import pytest

from acquisition.service.events import EventBus
from acquisition.service.processing import exam_result, tube_skew_check
from reconstruction.qc import QCLimits

RECON = {
    "views": {},
    "markers": [],
    "ambiguous": [],
    "qc": {
        "verdict": "pass",
        "checks": [
            {
                "code": "marker_count",
                "view": None,
                "passed": True,
                "value": 5,
                "limit": 3,
                "message": "5 patient markers",
            }
        ],
    },
}


@pytest.mark.parametrize(
    ("skew", "passed", "verdict"),
    [
        (0.0, True, "pass"),
        (499.9, True, "pass"),
        (500.0, True, "pass"),
        (500.1, False, "retake"),
        (-620.0, False, "retake"),
        (None, False, "retake"),
    ],
)
def test_tube_skew_folds_into_the_verdict(skew, passed, verdict):
    r = exam_result(RECON, {"skew_us": skew, "exposure_id": 4})
    check = r["qc"]["checks"][-1]
    assert check["code"] == "tube_skew" and check["view"] is None
    assert check["passed"] is passed and check["limit"] == 500.0
    assert r["qc"]["verdict"] == verdict
    assert r["tube_skew_us"] == skew and r["exposure"]["exposure_id"] == 4
    assert RECON["qc"]["verdict"] == "pass" and len(RECON["qc"]["checks"]) == 1  # not mutated


def test_a_failed_reconstruction_check_keeps_retake():
    bad = {
        **RECON,
        "qc": {"verdict": "retake", "checks": [{**RECON["qc"]["checks"][0], "passed": False}]},
    }
    assert exam_result(bad, {"skew_us": 1.0})["qc"]["verdict"] == "retake"


def test_a_site_may_tighten_the_skew_limit():
    c = tube_skew_check(150.0, QCLimits(tube_skew=100.0))
    assert not c.passed and c.limit == 100.0 and "retake" in c.message


def test_event_bus_delivers_to_threads_and_drops_oldest_for_slow_streams():
    async def main():
        bus = EventBus(queue_size=3)
        bus.bind(asyncio.get_running_loop())
        q = bus.subscribe()
        bus.publish("status", state="idle")
        for i in range(5):
            await asyncio.to_thread(bus.publish, "progress", n=i)  # from another thread
        await asyncio.sleep(0.05)
        got = [q.get_nowait().data for _ in range(q.qsize())]
        assert got == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert [e.kind for e in bus.snapshot()] == ["status"]  # sticky: the present
        bus.unsubscribe(q)

    asyncio.run(main())
