"""A batch job's CPU priority below the serving processes that share its machine.

`nice` alone does not do it on Linux: with autogroup scheduling (on by default in most distributions) the
scheduler first shares the CPU fairly between *sessions*, and niceness only orders the threads inside one.
A nightly started in its own session (cron, systemd, a scheduler's subprocess, `setsid`) then gets a full
share against the serving processes whatever its niceness. So besides the process's own niceness, a job
that leads its own session sets the niceness of the session's autogroup (/proc/self/autogroup, see
sched(7)). A job that does not lead its session leaves the session's autogroup alone: that would renice the
shell or supervisor that launched it, and stay so after the job ends.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")


@dataclass(frozen=True)
class Priority:
    niceness: int  # the process's niceness after the call
    autogroup: int | None  # its session's autogroup niceness after the call; None where the kernel has none
    note: str  # what was changed, or why not

    def as_dict(self) -> dict:
        return asdict(self)


def _autogroup_nice() -> int | None:
    try:  # "/autogroup-414 nice 0"
        return int(AUTOGROUP.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def lower_priority(niceness: int) -> Priority:
    """Lower this process's CPU priority to `niceness` (0..19); never raises it, never fails the job.

    Call it before the job starts its worker threads: on Linux a niceness is per thread, and threads
    inherit it when they are created."""
    if not 0 <= niceness <= 19:
        raise ValueError(f"niceness must be between 0 and 19, got {niceness}")
    current = os.getpriority(os.PRIO_PROCESS, 0)
    notes = []
    if niceness > current:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        notes.append(f"niceness {current} -> {niceness}")
    group = _autogroup_nice()
    if group is not None and niceness > group:
        if os.getsid(0) != os.getpid():
            notes.append("autogroup left as it is (not the leader of its own session; start the job with "
                         "setsid for its niceness to count against other sessions)")
        else:
            for attempt in range(3):
                try:
                    AUTOGROUP.write_text(str(niceness))
                    notes.append(f"autogroup niceness {group} -> {niceness}")
                    break
                except OSError as e:
                    # without CAP_SYS_ADMIN the kernel takes one autogroup write per 100 ms, machine-wide
                    if e.errno == errno.EAGAIN and attempt < 2:
                        time.sleep(0.11)
                        continue
                    notes.append(f"autogroup left as it is ({e.strerror or e})")
                    break
    return Priority(os.getpriority(os.PRIO_PROCESS, 0), _autogroup_nice(), "; ".join(notes) or "unchanged")
