"""Argument checks shared by every layer of the package (``ops`` included: this module imports nothing of mesanet).

Each ``check_*`` returns the value (as ``int`` / ``float`` / ``list``) or raises one line naming the field, what was
expected and what arrived, e.g. ``ValueError("SeqModelConfig.num_heads: expected an integer >= 1, got 0")``. Pass
``error=`` for a subclass of ``ValueError`` (``DataError``, ``ConfigError``). The ``is_*`` predicates are for
callers that phrase their own message. ``bool`` is never accepted as a number (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Collection, Optional

__all__ = ["is_int", "is_real", "check_int", "check_float", "check_choice", "check_list", "check_int_list"]


def is_int(value: object, minimum: Optional[int] = None) -> bool:
    """``value`` is an integer (Python or numpy, not ``bool``), at least ``minimum`` if given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return minimum is None or value >= minimum


def is_real(value: object, *, finite: bool = True) -> bool:
    """``value`` is a real number (int / float / numpy scalar, not ``bool``), finite unless ``finite=False``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return not finite or math.isfinite(value)


def _fail(error: type[Exception], name: str, expected: str, value: object) -> None:
    raise error(f"{name}: expected {expected}, got {value!r}")


def check_int(
    name: str,
    value: object,
    *,
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
    optional: bool = False,
    what: str = "",
    error: type[Exception] = ValueError,
) -> Optional[int]:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]`` (``None`` too when ``optional``);
    otherwise ``error("<name>: expected an integer >= <minimum> (<what>), got <value>")``."""
    if optional and value is None:
        return None
    if minimum is not None and maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        expected = f"an integer >= {minimum}"
    elif maximum is not None:
        expected = f"an integer <= {maximum}"
    else:
        expected = "an integer"
    if optional:
        expected = f"None or {expected}"
    if what:
        expected = f"{expected} ({what})"
    if not is_int(value, minimum) or (maximum is not None and value > maximum):
        _fail(error, name, expected, value)
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    finite: bool = True,
    optional: bool = False,
    what: str = "",
    error: type[Exception] = ValueError,
) -> Optional[float]:
    """``value`` as a ``float`` if it is a real number (finite unless ``finite=False``) within the bounds;
    otherwise ``error("<name>: expected a finite number >= 0, got <value>")`` and the like."""
    if optional and value is None:
        return None
    parts = []
    if minimum is not None:
        parts.append(f"{'>=' if min_inclusive else '>'} {minimum}")
    if maximum is not None:
        parts.append(f"{'<=' if max_inclusive else '<'} {maximum}")
    expected = ("a finite number" if finite else "a number") + (" " + " and ".join(parts) if parts else "")
    if optional:
        expected = f"None or {expected}"
    if what:
        expected = f"{expected} ({what})"
    ok = is_real(value, finite=finite)
    if ok and minimum is not None:
        ok = value >= minimum if min_inclusive else value > minimum
    if ok and maximum is not None:
        ok = value <= maximum if max_inclusive else value < maximum
    if not ok:
        _fail(error, name, expected, value)
    return float(value)


def check_choice(name: str, value: Any, choices: Collection, *, error: type[Exception] = ValueError) -> Any:
    """``value`` if it is one of ``choices``; otherwise ``error("<name>: expected one of [...], got <value>")``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set / dict
        ok = False
    if not ok:
        _fail(error, name, f"one of {sorted(choices, key=str)}", value)
    return value


def check_list(name: str, value: object, *, nonempty: bool = True, error: type[Exception] = ValueError) -> list:
    """``value`` as a ``list`` if it is a list or tuple (not a string), non-empty unless ``nonempty=False``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or (nonempty and not value):
        _fail(error, name, "a non-empty list" if nonempty else "a list", value)
    return list(value)


def check_int_list(
    name: str, value: object, *, minimum: Optional[int] = None, nonempty: bool = True, error: type[Exception] = ValueError
) -> list[int]:
    """``value`` as a list of ``int`` if it is a list / tuple of integers, each at least ``minimum``."""
    values = check_list(name, value, nonempty=nonempty, error=error)
    if not all(is_int(v, minimum) for v in values):
        bound = f" >= {minimum}" if minimum is not None else ""
        _fail(error, name, f"a {'non-empty ' if nonempty else ''}list of integers{bound}", value)
    return [int(v) for v in values]
