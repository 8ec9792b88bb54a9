"""`netoffload rules`: rules reach the firmware in a running process; errors are one line."""

from __future__ import annotations

import json

from tests.cli.helpers import one_line_error as _one_line_error
from tests.cli.helpers import run_cli as _run
from tests.control.child import running_child


def test_rules_are_added_listed_and_deleted_in_a_running_process() -> None:
    with running_child("rules-a", softnic=True):
        code, out, err = _run(
            "rules", "rules-a", "add", "flow-type", "tcp4", "dst-port", "5201", "action", "drop"
        )
        assert code == 0, err
        assert out.strip() == "added classify rule 1"
        code, out, err = _run(
            "rules", "rules-a", "add", "dos", "limit", "syn", "100", "burst", "10"
        )
        assert code == 0, err
        assert out.strip() == "added dos rule 1"
        code, out, err = _run("rules", "rules-a", "list")
        assert code == 0, err
        lines = out.strip().splitlines()
        assert lines[0].startswith("classify 1: flow-type tcp4 dst-port 5201 action drop")
        assert lines[1].startswith("dos 1: limit syn 100 burst 10")
        code, out, err = _run("rules", "rules-a", "list", "--json")
        assert code == 0, err
        reply = json.loads(out)
        assert reply["device"] == "softnic0"
        assert [(r["table"], r["id"]) for r in reply["rules"]] == [("classify", 1), ("dos", 1)]
        assert _run("rules", "rules-a", "del", "1")[1].strip() == "deleted classify rule 1"
        assert _run("rules", "rules-a", "del", "dos", "1")[1].strip() == "deleted dos rule 1"
        assert _run("rules", "rules-a", "list")[1].strip() == "no rules"


def test_rules_errors_are_one_line() -> None:
    err = _one_line_error(*_run("rules", "nobody", "list"))
    assert err == "Error: no netoffload process named 'nobody'"
    with running_child("rules-b", softnic=True):
        err = _one_line_error(*_run("rules", "rules-b", "add", "flow-type", "tcp9"))
        assert "flow-type" in err and "tcp9" in err
        err = _one_line_error(*_run("rules", "rules-b", "del", "7"))
        assert "no rule 7" in err
        err = _one_line_error(*_run("rules", "rules-b", "add", "dos", "limit", "syn", "x"))
        assert "rate" in err
        err = _one_line_error(*_run("rules", "rules-b", "list", "--device", "eth9"))
        assert "no device 'eth9'" in err
        err = _one_line_error(*_run("rules", "rules-b", "add"))
        assert "add needs words" in err
        # A queue the device does not have is refused, not wrapped around.
        err = _one_line_error(*_run("rules", "rules-b", "add", "flow-type", "udp4", "action", "3"))
        assert "queue 3" in err
