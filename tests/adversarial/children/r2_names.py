"""Issue 18, class 11 (names): one rule for every ``name=`` of the public constructors.

On a3e9ecf a name with ``"\\x00"`` or a lone surrogate raised a builtin ValueError or
UnicodeEncodeError from RegionGuard and Secret (from the core's label), while PkeyGuard took
it.  Now every constructor refuses the same names with a pkeyguard error naming ``name``,
before it reads, prompts, maps or allocates anything, and runs no method of a ``str``
subclass.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import Any

from pkeyguard import (
    ArgumentTypeError,
    PkeyGuard,
    PkeyguardError,
    RegionGuard,
    Secret,
)
from tests.adversarial.childlib import assert_clean, snapshot

CALLS: list[str] = []  # what a hostile name's methods were asked


class HostileName(str):
    """A str whose every method a library might call records the call and raises."""

    def _hit(self, what: str) -> Any:
        CALLS.append(what)
        raise RuntimeError(f"HostileName.{what} ran")

    def __str__(self) -> str:
        return self._hit("__str__")  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return self._hit("__repr__")  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return self._hit("__eq__")  # type: ignore[no-any-return]

    def __hash__(self) -> int:
        return self._hit("__hash__")  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self._hit("__len__")  # type: ignore[no-any-return]

    def __format__(self, spec: str) -> str:
        return self._hit("__format__")  # type: ignore[no-any-return]

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return self._hit("encode")  # type: ignore[no-any-return]


class LyingClass:
    """Not a str, but says so through ``__class__``."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # pyright: ignore[reportIncompatibleMethodOverride]
        CALLS.append("__class__")
        return str


REFUSED_VALUES = {
    "NUL": "key\x00name",
    "lone surrogate": "key\udc80name",
    "newline": "key\nname",
    "escape": "\x1b[31mred",
    "bidi override": "\u202eeman",
    "very long": "k" * 100_000,
    "just too long": "k" * 257,
}


Make = Callable[[Any], object]


def _constructors() -> tuple[dict[str, Make], list[int]]:
    """Every public constructor that takes ``name=``; ``taken`` records a source read."""
    taken: list[int] = []

    def from_fd(name: Any) -> Secret:
        r, w = os.pipe()
        os.write(w, b"secret")
        os.close(w)
        try:
            return Secret.from_fd(r, name=name)
        finally:
            os.close(r)

    def chunks() -> Iterator[bytes]:
        taken.append(1)
        yield b"x"

    def writer(buf: memoryview) -> None:
        taken.append(2)

    makers: dict[str, Make] = {
        "PkeyGuard": lambda n: PkeyGuard(name=n),
        "RegionGuard": lambda n: RegionGuard(16, name=n),
        "Secret": lambda n: Secret(16, name=n),
        "Secret.from_bytes": lambda n: Secret.from_bytes(b"x", name=n),
        "Secret.from_chunks": lambda n: Secret.from_chunks(chunks(), name=n),
        "Secret.from_fd": from_fd,
        "Secret.from_file": lambda n: Secret.from_file("/proc/self/status", name=n),
        "Secret.from_stream": lambda n: Secret.from_stream(io.BytesIO(b"s"), name=n),
        "Secret.from_writer": lambda n: Secret.from_writer(8, writer, name=n),
        # no terminal here: a name checked after /dev/tty was opened would give OSError
        "Secret.from_prompt": lambda n: Secret.from_prompt(name=n),
    }
    return makers, taken


def _close(obj: object) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        close()


def case_every_constructor_refuses_the_same_names() -> None:
    constructors, taken = _constructors()
    snap = snapshot()
    for label, name in REFUSED_VALUES.items():
        for what, make in constructors.items():
            try:
                obj = make(name)
            except PkeyguardError as exc:  # ArgumentValueError: the ValueError family
                assert isinstance(exc, ValueError), f"{what}, {label}: {exc!r}"
                assert "name" in str(exc), f"{what}, {label}: {exc}"
            except BaseException as exc:
                raise AssertionError(
                    f"{what} with a name with a {label}: {type(exc).__module__}."
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            else:
                _close(obj)
                raise AssertionError(f"{what} took a name with a {label}")
        for what, make in constructors.items():  # the same name as a str subclass
            try:
                obj = make(type("Sub", (str,), {})(name))
            except PkeyguardError as exc:
                assert isinstance(exc, ValueError), f"{what}, {label}: {exc!r}"
            else:
                _close(obj)
                raise AssertionError(f"{what} took a str subclass holding a {label}")
    for bad in (5, b"name", LyingClass()):
        for what, make in constructors.items():
            try:
                obj = make(bad)
            except ArgumentTypeError as exc:
                assert "name" in str(exc), f"{what}: {exc}"
            else:
                _close(obj)
                raise AssertionError(f"{what} took the name {type(bad).__name__}")
    assert not taken, "a constructor read its source before it checked the name"
    assert not CALLS, f"the library asked a hostile object: {CALLS}"
    assert_clean(snap, "refused names")


def case_hostile_str_subclass_is_copied_untouched() -> None:
    constructors, _ = _constructors()
    snap = snapshot()
    for what, make in constructors.items():
        if what == "Secret.from_prompt":
            continue  # needs a terminal: the refusals above cover its check
        name = HostileName("api key é 256")
        obj = make(name)
        try:
            got = getattr(obj, "name", None)
            assert type(got) is str and str.__eq__(got, "api key é 256"), (what, type(got))
            repr(obj)  # uses the copy
        finally:
            _close(obj)
    # The attack was on: the name really is hostile to anyone who asks it.
    try:
        str(HostileName("x"))
    except RuntimeError:
        pass
    else:
        raise AssertionError("HostileName.__str__ did not raise")
    assert CALLS == ["__str__"], f"the library asked the hostile name: {CALLS[:-1]}"
    # the longest name taken, and None
    for make in constructors.values():
        for valid in ("k" * 256, None, ""):
            try:
                obj = make(valid)
            except PkeyguardError as exc:
                raise AssertionError(f"a valid name {valid!r:.20} refused: {exc}") from exc
            except OSError:
                continue  # from_prompt without a terminal: past the name check
            _close(obj)
    assert_clean(snap, "hostile str subclass")
