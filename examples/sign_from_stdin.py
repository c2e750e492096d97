"""Sign a message with an HMAC key read from standard input, without a plain copy of the key.

    head -c 32 /dev/urandom > key && python examples/sign_from_stdin.py "GET /orders" < key
    vault read -field=key secret/signing | python examples/sign_from_stdin.py "GET /orders"

``Secret.from_fd(0)`` reads the pipe (or file) with ``readv`` straight into protected memory:
no ``bytes`` or ``bytearray`` ever holds the key, so nothing unwiped is left in the Python
heap. ``hmac.digest`` reads the key in place inside ``reveal()``. Where the kernel has
``memfd_secret`` the key's pages are also out of the kernel's direct map: ``/proc/PID/mem``
and ``process_vm_readv`` cannot read them.
"""

from __future__ import annotations

import hmac
import sys

from pkeyguard import Secret


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} MESSAGE < KEY", file=sys.stderr)
        return 2
    # stdin as a descriptor, not sys.stdin: a text or buffered stream would keep a copy
    with Secret.from_fd(sys.stdin.fileno(), max_size=4096, name="signing key") as key:
        with key.reveal() as buf:
            tag = hmac.digest(buf, argv[1].encode(), "sha256")
        print(f"{key!r} in {key.backing} memory", file=sys.stderr)
    print(tag.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
