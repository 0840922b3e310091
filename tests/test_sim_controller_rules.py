"""Mutation check of the safety rules: each HIL test fails when its rule is removed.

Every rule in ``simulator.controller.RULES`` is switched off in turn (the
firmware's ``disabled_rules``, reachable only through ``sim://...?disable=``)
and the HIL test that guards it is run against that crippled board through the
bridge: it must fail. The same test with the rule in place must pass, so the
failure is the rule's doing.
"""

from __future__ import annotations

import pytest

from firmware_bridge import BridgeError
from hil_tests import test_hil_exposure as E
from hil_tests import test_hil_safety as S
from hil_tests.board import open_board
from simulator.controller import RULES

GUARDS = {
    "watchdog": S.test_watchdog_lost_heartbeat_aborts_and_goes_safe,
    "hold_deadman": E.test_software_hold_keepalive_stopping_aborts,
    "release_abort": E.test_release_during_exposure_aborts,
    "prep_timeout": S.test_prep_timeout,
    "backup_timer": S.test_backup_timer_ends_stuck_exposure,
    "interlock_abort": S.test_interlock_opening_mid_exposure,
    "arm_interlocks": S.test_arm_refused_with_reason,
    "one_exposure_per_press": E.test_one_exposure_per_press,
    "xray_on_lock": S.test_technique_change_with_xrays_on_refused,
    "tube_limits": S.test_technique_outside_limits_refused,
    "heat_limit": S.test_heat_limit,
    "duty_limit": S.test_duty_limit,
    "skew_flag": S.test_skew_over_limit_flagged,
}
FAILS = (AssertionError, pytest.fail.Exception, BridgeError)


def test_every_rule_has_a_guard():
    assert set(GUARDS) == set(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_guard_passes_with_the_rule(rule):
    import simulator.controller  # noqa: F401  (sim://)

    with open_board(f"sim://guard-{rule}?fresh=1&seed=1") as board:
        GUARDS[rule](board)


@pytest.mark.parametrize("rule", RULES)
def test_guard_fails_without_the_rule(rule):
    with open_board(f"sim://mutant-{rule}?fresh=1&seed=1&disable={rule}") as board:
        board.event_timeout = 3.0  # a mutant may never send what the test waits for
        with pytest.raises(FAILS):
            GUARDS[rule](board)
