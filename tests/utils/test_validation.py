"""The shared argument checks: what they accept, and one-line messages naming field, expectation and value."""

import numpy as np
import pytest

from mesanet.utils.validation import check_choice, check_float, check_int, check_int_list, check_list, is_int, is_real


def test_is_int_and_is_real_reject_bool_and_accept_numpy():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_int(0, 0) and not is_int(0, 1)
    assert is_real(1.5) and is_real(np.float32(1.5)) and not is_real(False) and not is_real(float("inf"))
    assert is_real(float("inf"), finite=False)


@pytest.mark.parametrize(
    "kwargs, value, message",
    [
        (dict(minimum=1), 0, "n: expected an integer >= 1, got 0"),
        (dict(minimum=1), True, "n: expected an integer >= 1, got True"),
        (dict(minimum=0, maximum=3), 4, r"n: expected an integer in \[0, 3\], got 4"),
        (dict(minimum=1, optional=True), 2.5, "n: expected None or an integer >= 1, got 2.5"),
        (dict(minimum=2, what="the training length"), "8", r"n: expected an integer >= 2 \(the training length\), got '8'"),
    ],
)
def test_check_int_messages(kwargs, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_int("n", value, **kwargs)


def test_check_int_returns_int_and_none():
    assert check_int("n", np.int32(4), minimum=1) == 4 and type(check_int("n", np.int32(4))) is int
    assert check_int("n", None, optional=True) is None


def test_check_float_and_choice_and_lists():
    assert check_float("x", 2, minimum=0) == 2.0
    with pytest.raises(ValueError, match=r"^x: expected a finite number > 0 and <= 1, got 0$"):
        check_float("x", 0, minimum=0, min_inclusive=False, maximum=1)
    with pytest.raises(ValueError, match=r"^x: expected a finite number, got nan$"):
        check_float("x", float("nan"))
    assert check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^mode: expected one of \['a', 'b'\], got 'c'$"):
        check_choice("mode", "c", ("b", "a"))
    with pytest.raises(ValueError, match=r"^xs: expected a non-empty list, got 'ab'$"):
        check_list("xs", "ab")
    assert check_int_list("ks", (1, np.int64(2)), minimum=1) == [1, 2]
    with pytest.raises(ValueError, match=r"^ks: expected a non-empty list of integers >= 1, got \[1, 0\]$"):
        check_int_list("ks", [1, 0], minimum=1)


def test_error_type_is_configurable():
    class DataError(ValueError):
        pass

    with pytest.raises(DataError, match="seed"):
        check_int("seed", -1, minimum=0, error=DataError)
