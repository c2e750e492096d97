"""A runner killed with SIGKILL by ``test_child_dies_with_a_hard_killed_runner``: it starts a
child (``sleep 60``, in a session of its own) with pkeyguard_vm's ``_die_with_parent``, prints
the child's pid and waits.  ``python hard_killed_runner.py SRC`` (SRC: where pkeyguard_vm is).
"""

from __future__ import annotations

import subprocess
import sys


def main(src: str) -> None:
    sys.path.insert(0, src)
    import pkeyguard_vm as vm

    child = subprocess.Popen(
        ["sleep", "60"],
        start_new_session=True,
        preexec_fn=vm._die_with_parent(),  # pyright: ignore[reportPrivateUsage]
    )
    print(child.pid, flush=True)
    child.wait()


if __name__ == "__main__":
    main(sys.argv[1])
