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
from sidestep.priority import lower_priority
p = lower_priority(int(sys.argv[1]))
print(json.dumps({**p.as_dict(), "pid": os.getpid(), "sid": os.getsid(0)}))
"""
# Where the process sits in a cgroup with its own CPU controller (most containers), /proc/self/autogroup
# exists but is empty: the kernel schedules it by the cgroup, not by session, and there is nothing to set.
HAS_AUTOGROUP = _autogroup_nice() is not None


def _child(niceness: int, new_session: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(niceness)], capture_output=True, text=True, check=True,
                         start_new_session=new_session, timeout=60)
    return json.loads(out.stdout)


def test_a_session_leader_lowers_its_process_and_its_autogroup():
    before = _autogroup_nice()
    r = _child(7, new_session=True)
    assert r["pid"] == r["sid"]
    assert r["niceness"] == max(7, os.getpriority(os.PRIO_PROCESS, 0))  # never above what it inherited
    if HAS_AUTOGROUP:
        assert r["autogroup"] == 7, r
        assert "autogroup niceness 0 -> 7" in r["note"]
    else:
        assert r["autogroup"] is None
    assert _autogroup_nice() == before  # the launcher's session is untouched


def test_a_job_inside_someone_elses_session_leaves_that_session_alone():
    before = _autogroup_nice()
    r = _child(9, new_session=False)
    assert r["niceness"] == max(9, os.getpriority(os.PRIO_PROCESS, 0))
    assert r["autogroup"] == before
    if HAS_AUTOGROUP and (before or 0) < 9:
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
