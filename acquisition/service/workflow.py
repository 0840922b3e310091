"""The exam workflow as an explicit state machine.

Every change of an exam's state goes through :func:`next_state`; a step that
is not allowed in the current state raises :class:`WorkflowError` carrying one
sentence for the technician, which the API returns with status 409.

::

    registered --set_technique--> ready --arm--> armed --exposure_started--> exposing
        ^                          ^  |            |  \\                        |
        |                          |  +<-disarm----+   +--exposure_report--+---+
        |                          |                                        v
        |                          +<--exposure_aborted / frames_timeout-- acquiring
        |                          |                                        | frames_stored
        |                          +<--pair_done (series not complete)--- processing
        |                          |                                        | processed
        |                          +<------------retake----------------- review
        |                                                                   | accept
        +-- (any open state) --cancel--> cancelled                       completed
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    REGISTERED = "registered"
    READY = "ready"
    ARMED = "armed"
    EXPOSING = "exposing"
    ACQUIRING = "acquiring"
    PROCESSING = "processing"
    REVIEW = "review"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


# States in which the station's hardware is busy with the exam: only one exam at a time.
ACTIVE = frozenset({State.ARMED, State.EXPOSING, State.ACQUIRING, State.PROCESSING})
FINAL = frozenset({State.COMPLETED, State.CANCELLED})


@dataclass(frozen=True)
class Step:
    sources: frozenset[State]
    target: State | None  # None: stays in the same state
    why_not: str  # the sentence when refused; {state} is filled in


S = State
STEPS: dict[str, Step] = {
    "set_technique": Step(
        frozenset({S.REGISTERED, S.READY}),
        S.READY,
        "The technique can only be changed before arming; the exam is {state}.",
    ),
    "arm": Step(
        frozenset({S.READY}),
        S.ARMED,
        "The exam cannot be armed while it is {state}; set the technique first "
        "(or finish the current exposure).",
    ),
    "disarm": Step(
        frozenset({S.ARMED}), S.READY, "Only an armed exam can be disarmed; it is {state}."
    ),
    "hold": Step(
        frozenset({S.ARMED, S.EXPOSING}),
        None,
        "Hold-to-expose needs an armed exam; the exam is {state}.",
    ),
    "release": Step(
        frozenset({S.ARMED, S.EXPOSING, S.ACQUIRING, S.PROCESSING, S.READY, S.REVIEW}),
        None,
        "Nothing to release; the exam is {state}.",
    ),
    "exposure_started": Step(
        frozenset({S.ARMED}), S.EXPOSING, "No exposure was expected; the exam is {state}."
    ),
    "exposure_report": Step(
        frozenset({S.ARMED, S.EXPOSING}),
        S.ACQUIRING,
        "An exposure report arrived while the exam was {state}.",
    ),
    "exposure_aborted": Step(
        frozenset({S.ARMED, S.EXPOSING, S.ACQUIRING}),
        S.READY,
        "No exposure to abort; the exam is {state}.",
    ),
    "frames_stored": Step(
        frozenset({S.ACQUIRING}), S.PROCESSING, "Frames arrived while the exam was {state}."
    ),
    "pair_done": Step(
        frozenset({S.PROCESSING}),
        S.READY,
        "A series pair finished while the exam was {state}.",
    ),
    "processed": Step(
        frozenset({S.PROCESSING}), S.REVIEW, "Processing finished while the exam was {state}."
    ),
    "retake": Step(
        frozenset({S.REVIEW}),
        S.READY,
        "A retake is possible once the verdict is shown; the exam is {state}.",
    ),
    "accept": Step(
        frozenset({S.REVIEW}),
        S.COMPLETED,
        "Only an exam with a verdict can be accepted; the exam is {state}.",
    ),
    "cancel": Step(
        frozenset({S.REGISTERED, S.READY, S.REVIEW}),
        S.CANCELLED,
        "The exam cannot be cancelled while it is {state}; disarm or wait for processing.",
    ),
}


class WorkflowError(Exception):
    """A step refused in the current state, or by the station; ``str()`` is the sentence."""


def next_state(state: str, action: str) -> State:
    """The state after ``action`` from ``state``, or :class:`WorkflowError` if not allowed."""
    step = STEPS[action]
    st = State(state)
    if st not in step.sources:
        raise WorkflowError(step.why_not.format(state=_label(st)))
    return step.target or st


def allowed_actions(state: str) -> list[str]:
    """The operator actions possible now (what the page enables)."""
    st = State(state)
    ops = ("set_technique", "arm", "disarm", "hold", "retake", "accept", "cancel")
    return [a for a in ops if st in STEPS[a].sources]


def _label(st: State) -> str:
    return {
        S.REGISTERED: "registered without a technique",
        S.READY: "ready (not armed)",
        S.ARMED: "armed",
        S.EXPOSING: "exposing",
        S.ACQUIRING: "waiting for the detector frames",
        S.PROCESSING: "being processed",
        S.REVIEW: "showing its verdict",
        S.COMPLETED: "completed",
        S.CANCELLED: "cancelled",
    }[st]
