"""``NeedleConfig`` (lengths, depths, haystacks, trials, value digits) and the constants of the needle test."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mesanet.utils.validation import check_int, check_list, is_real

HAYSTACKS = ("noise", "text")
NEEDLE_CSV = "needle.csv"
NEEDLE_TRIALS_CSV = "needle_trials.csv"
NEEDLE_MD = "needle.md"
NEEDLE_PNG = "needle.png"

#: Between documents of the text haystack.
DOC_SEPARATOR = "\n\n"
#: log-probability per digit of a model that knows a digit comes next and nothing else.
CHANCE_LOGPROB_PER_DIGIT = -math.log(10.0)

_DECODE = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)

_NAMES = (
    "data value result items count name path node index size total buffer offset config state parent child text "
    "line token item entry record field label option mode flag level limit width height start stop step delta "
    "source target module handler parser reader writer stream cache queue stack table row column header body "
    "prefix suffix pattern match group args kwargs params options"
).split()
_FUNCS = "get update append extend insert pop join split strip format encode decode read write open close parse load dump copy sort replace find".split()
_MODULES = "os sys re json math time copy types string logging functools itertools collections".split()
_WORDS = "alpha beta gamma delta red green blue north south east west spam eggs ham foo bar baz default utf-8 ascii".split()


@dataclass
class NeedleConfig:
    """What to measure. Lengths are ``round(factor * train_len)`` tokens, BOS, needle and query included."""

    train_len: int = 256  # the model's training length (a run's data.seq_len)
    factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    haystacks: list[str] = field(default_factory=lambda: list(HAYSTACKS))
    trials: int = 8  # per (haystack, length, depth)
    key: str = "SECRET_CODE"
    min_digits: int = 4
    max_digits: int = 6
    seed: int = 0
    batch_size: int = 8  # prompts per forward

    def __post_init__(self) -> None:
        where = "NeedleConfig"
        check_int(f"{where}.train_len", self.train_len, minimum=2, what="the training length")
        self.factors = _floats(f"{where}.factors", self.factors)
        for f in self.factors:
            if not math.isfinite(f) or f <= 0:
                raise ValueError(f"{where}.factors: expected positive multiples of the training length, got {self.factors}")
        if len({self._length(f) for f in self.factors}) != len(self.factors):
            raise ValueError(f"{where}.factors: {self.factors} give repeated lengths {[self._length(f) for f in self.factors]}")
        self.depths = _floats(f"{where}.depths", self.depths)
        bad = [d for d in self.depths if not (0.0 <= d <= 1.0)]
        if bad:
            raise ValueError(
                f"{where}.depths: expected depth fractions in [0, 1] (0: start of the haystack, 1: its end), got {bad}"
            )
        if len(set(self.depths)) != len(self.depths):
            raise ValueError(f"{where}.depths: expected distinct depths, got {self.depths}")
        self.haystacks = list(check_list(f"{where}.haystacks", self.haystacks))
        unknown = [h for h in self.haystacks if h not in HAYSTACKS]
        if unknown:
            raise ValueError(f"{where}.haystacks: unknown haystack(s) {unknown}; expected some of {list(HAYSTACKS)}")
        if len(set(self.haystacks)) != len(self.haystacks):
            raise ValueError(f"{where}.haystacks: expected distinct haystacks, got {self.haystacks}")
        check_int(f"{where}.trials", self.trials, minimum=1, what="the number of trials per cell")
        if not isinstance(self.key, str) or not self.key.isidentifier():
            raise ValueError(f"{where}.key: expected a Python identifier (the needle's variable name), got {self.key!r}")
        check_int(f"{where}.min_digits", self.min_digits, minimum=1, what="the fewest digits of a value")
        check_int(
            f"{where}.max_digits",
            self.max_digits,
            minimum=self.min_digits,
            what=f"the most digits of a value (>= min_digits = {self.min_digits})",
        )
        if self.max_digits > 18:
            raise ValueError(f"{where}.max_digits: expected at most 18 digits, got {self.max_digits}")
        check_int(f"{where}.seed", self.seed, minimum=0, what="a non-negative seed")
        check_int(f"{where}.batch_size", self.batch_size, minimum=1, what="prompts per forward")

    def _length(self, factor: float) -> int:
        return int(round(factor * self.train_len))

    def lengths(self) -> list[tuple[float, int]]:
        """``(factor, length in tokens)`` in the order given."""
        return [(f, self._length(f)) for f in self.factors]


def _floats(name: str, value) -> list[float]:
    values = check_list(name, value)
    if not all(is_real(v, finite=False) for v in values):
        raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
    return [float(v) for v in values]
