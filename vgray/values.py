"""The doors of numbers and empty values: one reader for each, used by every command and reader.

Whatever brings a number in (a command-line option, a ``--set``, a YAML file, a sweep grid, a file
read back), it is read here: an integer must be an integer (not a boolean, not 2.5) that fits in 64
bits, and a count at most :data:`COUNT_MAX`; a real number must be finite (NaN and infinities pass
every comparison-based check, so they are refused first, and so is an integer too large for a
float); then its bounds. An empty value (``--out ''``, ``--set data.root=``, an empty config file)
is refused, never read as "use the default". Each refusal is one :class:`~vgray.errors.BadInput`
line naming the option, key or file.

For ``argparse``, :func:`count`, :func:`seed`, :func:`amount`, :func:`integer_option` and
:func:`text` make ``type=`` callables; :class:`vgray.console.Parser` gives every text option
:func:`text` and turns their refusals into the same line (``--shard-size=0 must be at least 1``).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable, List, Optional, Union

from vgray.errors import BadInput, shown

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The largest count (images, actors, CPUs, batch size, shard size, ...): a C int, what numpy,
# torch, faiss and Ray take without a second thought.
COUNT_MAX = 2**31 - 1
# Seeds: numpy's legacy generators and every seed vgray hands on take 32 bits.
SEED_MAX = 2**32 - 1

# The prefix of an argparse type's refusal: :class:`vgray.console.Parser` joins it to the option's
# name ("argument --k: =0 must ..." -> "--k=0 must ..."), so the message names the option.
OPTION_VALUE = "="

Number = Union[int, float]


def empty(value: Any) -> bool:
    """Whether ``value`` is an empty value: a string of nothing but white space."""
    return isinstance(value, str) and not value.strip()


def refuse_empty(value: Any, what: str, noun: str = "a value", hint: str = "") -> None:
    """The empty-value rule: :class:`BadInput` when ``value`` (of ``what``: an option, a key, a
    variable) is an empty string; an empty value is never read as the default."""
    if empty(value):
        raise BadInput(
            f"{what}={shown(value)} must name {noun}; an empty value is refused, not read as the default"
            f"{'; ' + hint if hint else ''}"
        )


def check_integer(value: Any, what: str) -> int:
    """``value`` as an integer that fits in 64 bits: not a boolean, not a float (``2.5``, ``3.0``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{what}={shown(value)} must be an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadInput(f"{what}={shown(value)} does not fit in 64 bits; give an integer from -2**63 to 2**63-1")
    return int(value)


def check_real(value: Any, what: str) -> float:
    """``value`` as a finite float: an int or float (not a boolean), neither NaN nor ±infinity, nor
    an integer past what a float holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{what}={shown(value)} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of 309 digits or more
        number = math.inf
    if not math.isfinite(number):
        raise BadInput(f"{what}={shown(value)} must be a finite number")
    return number


def check_bounds(
    value: Number,
    what: str,
    low: Optional[Number] = None,
    high: Optional[Number] = None,
    positive: bool = False,
    interval: bool = False,
    whole: Any = None,
) -> None:
    """:class:`BadInput` when the number ``value`` is not above 0 (``positive``), or lies outside
    ``[low, high]`` (either end may be None: unbounded). ``interval``: the message states the
    interval (``must lie in [0, 1]``) rather than the end crossed (``must be at least 1``);
    ``whole``: the value the message shows (a list ``value`` is one number of), default ``value``."""
    said = f"{what}={shown(value if whole is None else whole)}"
    if positive and not value > 0:
        raise BadInput(f"{said} must be positive")
    if (low is not None and not value >= low) or (high is not None and not value <= high):
        if interval:
            raise BadInput(f"{said} must lie in [{low}, {high}]")
        if low is not None and not value >= low:
            raise BadInput(f"{said} must be at least {low}")
        raise BadInput(f"{said} must be at most {high}")


def read_integer(value: Any, what: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """An integer (:func:`check_integer`) within ``[low, high]`` (outside them, the message states
    the bounds, which are tighter than 64 bits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        check_bounds(value, what, low, high)
    return check_integer(value, what)


def read_real(
    value: Any, what: str, low: Optional[float] = None, high: Optional[float] = None, positive: bool = False
) -> float:
    """A finite real number (:func:`check_real`) within ``[low, high]``, above 0 when ``positive``."""
    number = check_real(value, what)
    check_bounds(number, what, low, high, positive=positive)
    return number


def count_list(text: str, what: str, low: int = 1, high: int = COUNT_MAX) -> List[int]:
    """``"1,2,4"`` (an option's text) as counts, each an integer in ``[low, high]``; :class:`BadInput`
    naming ``what`` for an empty list or a bad item."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise BadInput(f"{what}={shown(text)} must list integers separated by commas, e.g. 1,2,4")
    out = []
    for item in items:
        try:
            out.append(read_integer(_int_text(item), "", low, high))
        except BadInput as exc:
            raise BadInput(f"{what} {shown(text)}: {str(exc).lstrip('=')}") from None
    return out


# -- argparse types ---------------------------------------------------------------------------------


class OptionType:
    """An argparse ``type=`` callable: the option's text read by ``read`` (which raises
    :class:`BadInput` naming ``""``); a refusal becomes argparse's error, which
    :class:`vgray.console.Parser` prints as one line naming the option."""

    def __init__(self, name: str, read: Callable[[str], Any]):
        self.__name__ = name  # argparse names a type by it
        self._read = read

    def __call__(self, text: str) -> Any:
        try:
            return self._read(text)
        except BadInput as exc:
            raise argparse.ArgumentTypeError(OPTION_VALUE + str(exc).lstrip("="))

    def __repr__(self) -> str:
        return self.__name__


def _int_text(text: str) -> int:
    refuse_empty(text, "", "an integer")
    try:
        return int(text)
    except ValueError:  # not an integer, or one of more than 4,300 digits
        raise BadInput(f"={shown(text)} must be an integer") from None


def _real_text(text: str) -> float:
    refuse_empty(text, "", "a number")
    try:
        number = float(text)
    except ValueError:
        raise BadInput(f"={shown(text)} must be a number") from None
    if not math.isfinite(number):
        raise BadInput(f"={shown(text)} must be a finite number")
    return number


def integer_option(low: Optional[int] = None, high: Optional[int] = None) -> OptionType:
    """``type=`` for an integer option within ``[low, high]`` (and 64 bits)."""
    return OptionType("integer", lambda text: read_integer(_int_text(text), "", low, high))


def count(low: int = 1, high: int = COUNT_MAX) -> OptionType:
    """``type=`` for a count option (``--runs``, ``--actors``, ``--shard-size``): an integer of at
    least ``low`` (1) and at most ``high`` (:data:`COUNT_MAX`)."""
    return OptionType("count", lambda text: read_integer(_int_text(text), "", low, high))


def seed() -> OptionType:
    """``type=`` for a seed option: an integer in ``[0, 2**32-1]``, as the config's ``seed``."""
    return OptionType("seed", lambda text: read_integer(_int_text(text), "", 0, SEED_MAX))


def amount(positive: bool = False, high: Optional[float] = None) -> OptionType:
    """``type=`` for an amount option (``--worker-cpus``, ``--worker-gpus``): a finite number of at
    least 0, above 0 when ``positive``, at most ``high`` when given."""
    return OptionType(
        "amount", lambda text: read_real(_real_text(text), "", None if positive else 0, high, positive=positive)
    )


def _text(value: str) -> str:
    refuse_empty(value, "")
    return value


text = OptionType("text", _text)
"""``type=`` for a text option: anything but an empty value (:func:`refuse_empty`)."""
