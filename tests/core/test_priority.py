"""A batch job lowers its own CPU priority, and its session's autogroup only when it leads that session."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sidestep.priority import _autogroup_nice, lower_priority

CHILD = """
import json, os, sys
from sidestep.priority import _autogroup_nice, lower_priority
before = _autogroup_nice()
p = lower_priority(int(sys.argv[1]))
print(json.dumps({**p.as_dict(), "pid": os.getpid(), "sid": os.getsid(0), "autogroup_before": before}))
"""
# What the child finds decides what it may do, not what the launcher finds: a launcher still in the
# kernel's default autogroup (a container's init never called setsid) reads an empty /proc/self/autogroup,
# while its child that starts a new session gets an autogroup of its own. A kernel without autogroups
# gives neither.


def _child(niceness: int, new_session: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(niceness)], capture_output=True, text=True, check=True,
                         start_new_session=new_session, timeout=60)
    return json.loads(out.stdout)


def test_a_session_leader_lowers_its_process_and_its_autogroup():
    before = _autogroup_nice()
    r = _child(7, new_session=True)
    assert r["pid"] == r["sid"]
    assert r["niceness"] == max(7, os.getpriority(os.PRIO_PROCESS, 0))  # never above what it inherited
    if r["autogroup_before"] is not None:
        assert r["autogroup"] == max(7, r["autogroup_before"]), r
        if r["autogroup_before"] < 7:
            assert f"autogroup niceness {r['autogroup_before']} -> 7" in r["note"]
    else:
        assert r["autogroup"] is None
    assert _autogroup_nice() == before  # the launcher's session is untouched


def test_a_job_inside_someone_elses_session_leaves_that_session_alone():
    before = _autogroup_nice()
    r = _child(9, new_session=False)
    assert r["niceness"] == max(9, os.getpriority(os.PRIO_PROCESS, 0))
    assert r["autogroup_before"] == before  # same session, same autogroup
    assert r["autogroup"] == before
    if before is not None and before < 9:
        assert "not the leader of its own session" in r["note"]
    assert _autogroup_nice() == before


def test_it_never_raises_a_priority_and_rejects_nonsense():
    code = ("import os, json; os.nice(5); from sidestep.priority import lower_priority; "
            "print(json.dumps(lower_priority(2).as_dict()))")
    r = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  timeout=60).stdout)
    assert r["niceness"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    with pytest.raises(ValueError, match="between 0 and 19"):
        lower_priority(20)
