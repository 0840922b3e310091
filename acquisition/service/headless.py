"""One whole exam without a browser, through the same runtime as the service.

Used by ``rsa-station exam --simulate`` and the benchmarks: register, set the
technique (the region's preset), arm, hold the software hand switch the way
the page does (a keep-alive every 80 ms while "pressed"), release when the
board has finished, then wait for the verdict.
"""

from __future__ import annotations

import time

from acquisition.service.runtime import Runtime
from acquisition.service.workflow import State

HOLD_PERIOD_S = 0.08  # under a third of the board's 250 ms hold timeout


def expose(rt: Runtime, operator: str, exam_id: int, timeout: float = 30.0) -> str:
    """Hold-to-expose until the exposure is over; returns the exam's state after it."""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            st = rt.store.exam(exam_id)["state"]
            if st not in (State.ARMED, State.EXPOSING):
                return st
            rt.hold(operator, exam_id)
            time.sleep(HOLD_PERIOD_S)
    finally:
        rt.release(operator, exam_id)
    raise TimeoutError(f"exam {exam_id}: no exposure within {timeout:g} s of holding")


def wait_state(rt: Runtime, exam_id: int, states, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        exam = rt.store.exam(exam_id)
        if exam["state"] in states:
            return exam
        time.sleep(0.05)
    raise TimeoutError(
        f"exam {exam_id} still {rt.store.exam(exam_id)['state']} after {timeout:g} s"
    )


def run_exam(
    rt: Runtime,
    region: str,
    *,
    operator: str = "exam-cli",
    patient_id: str = "SIM-0001",
    patient_name: str = "Simulated^Patient",
    timeout: float = 180.0,
    tries: int = 3,
) -> dict:
    """Register and run one exam to its verdict; returns the exam (state ``review``).

    An exposure the board aborted (e.g. the keep-alives came too late on a
    loaded machine: ``hold_lost``) is tried again, as a technician would press
    again, up to ``tries`` times; every try stays recorded as an attempt.
    """
    exam = rt.register(
        operator, {"patient_id": patient_id, "patient_name": patient_name, "region": region}
    )
    eid = exam["id"]
    rt.set_technique(operator, eid, exam["technique"])
    for _ in range(tries):
        rt.arm(operator, eid)
        expose(rt, operator, eid)
        exam = wait_state(rt, eid, (State.REVIEW, State.READY), timeout)
        rt.wait_idle(eid, timeout)  # overlays are drawn after the verdict is stored
        if exam["state"] == State.REVIEW:
            break
        time.sleep(0.5)  # the board wants the switch released before re-arming
    return rt.store.exam(eid)
