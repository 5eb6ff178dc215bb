"""Processes that never outlive their parent: `run_broker`'s children, and what a realm
worker forks (RQ's scheduler).

A `kill -9` gives a process no chance to stop its children, so each child asks the kernel
beforehand to kill it when its parent goes (Linux's PR_SET_PDEATHSIG); every child also
leads its own process group, so the supervisor can take a child down with everything it
started (`os.killpg`). Elsewhere than Linux the groups remain and the death signal is skipped.
"""
import ctypes
import functools
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# The pid of the process that last forked, read by its child after the fork.
_forking_pid: int | None = None


def die_with_parent(parent_pid: int | None) -> None:
    """Have the kernel SIGKILL this process when its parent ends; if the parent `parent_pid`
    already ended before this ran (a race with the fork), die now.

    The signal follows the parent *thread* that forked: fork from a thread that lives as
    long as its process (the main thread, or a pool's worker thread).
    """
    if not sys.platform.startswith("linux"):
        return
    if c_library().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def c_library() -> ctypes.CDLL:
    """Return the C library, loaded before any fork: between fork and exec a child of a
    threaded parent must not take the loader's locks."""
    return ctypes.CDLL(None, use_errno=True)


def start_in_own_group(parent_pid: int):
    """Return the `preexec_fn` of a supervised child: its own process group (so the
    supervisor can kill it whole, and a terminal's Ctrl-C reaches only the supervisor, which
    stops it in order) and death with `parent_pid`."""
    c_library()

    def prepare_child() -> None:
        os.setpgid(0, 0)
        die_with_parent(parent_pid)

    return prepare_child


def make_forks_die_with_this_process() -> None:
    """Have every child this process forks from now on (RQ's scheduler, a ForkProcess) die
    with it, so a realm worker killed with SIGKILL leaves no orphan behind."""
    c_library()
    os.register_at_fork(before=_note_forking_pid, after_in_child=_die_with_forking_parent)


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_forking_parent() -> None:
    die_with_parent(_forking_pid)


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads, and whatever is left in it after its leader died."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        logger.warning("could not kill process group %d", pid)
