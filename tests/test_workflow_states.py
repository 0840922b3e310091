"""The exam state machine: every (state, step) pair either moves as the table says or is
refused with a sentence naming the state; the store applies it atomically."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.service.store import Store
from acquisition.service.workflow import STEPS, State, WorkflowError, allowed_actions, next_state

EXPECTED = {  # the happy paths, written out independently of the table
    ("registered", "set_technique"): "ready",
    ("ready", "set_technique"): "ready",
    ("ready", "arm"): "armed",
    ("armed", "disarm"): "ready",
    ("armed", "exposure_started"): "exposing",
    ("armed", "exposure_report"): "acquiring",
    ("exposing", "exposure_report"): "acquiring",
    ("exposing", "exposure_aborted"): "ready",
    ("acquiring", "exposure_aborted"): "ready",
    ("acquiring", "frames_stored"): "processing",
    ("processing", "processed"): "review",
    ("processing", "pair_done"): "ready",
    ("review", "retake"): "ready",
    ("review", "accept"): "completed",
    ("review", "cancel"): "cancelled",
    ("registered", "cancel"): "cancelled",
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", sorted(STEPS))
def test_every_pair(state, action):
    key = (state.value, action)
    try:
        got = next_state(state, action)
    except WorkflowError as exc:
        assert key not in EXPECTED
        msg = str(exc)
        assert msg[0].isupper() and msg.endswith(".") and "{" not in msg
        return
    if key in EXPECTED:
        assert got == EXPECTED[key]
    else:  # allowed but not in the list above: only the no-move steps and aborts
        assert action in ("hold", "release", "exposure_aborted", "cancel"), key


def test_final_states_allow_nothing():
    for st_ in (State.COMPLETED, State.CANCELLED):
        assert allowed_actions(st_) == []
        for action in STEPS:
            with pytest.raises(WorkflowError):
                next_state(st_, action)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(STEPS)), max_size=25))
def test_store_follows_the_machine(tmp_path_factory, actions):
    """Random step sequences: the stored state is always what the machine says, and the
    audit log has exactly one entry per accepted step."""
    s = Store(tmp_path_factory.mktemp("wf") / "s.db")
    e = s.create_exam(
        "t",
        patient_id="P",
        patient_name="N",
        region="lower",
        procedure_code="0350T",
        technique={"A": {}, "B": {}},
    )
    state, accepted = "registered", 0
    for a in actions:
        try:
            want = next_state(state, a)
        except WorkflowError:
            with pytest.raises(WorkflowError):
                s.step(e["id"], a, "t")
            continue
        state = s.step(e["id"], a, "t")["state"]
        assert state == want
        accepted += 1
    assert s.exam(e["id"])["state"] == state
    assert len(s.audit_entries(e["id"])) == 1 + accepted
    assert s.verify_audit().ok
    s.close()
