"""Number checks shared by the fits, the models and the relaxivity table: one set, one wording.

>>> positive_number("2.5", "tr_ms (ms)")
2.5
>>> positive_number(-1, "tr_ms (ms)")
Traceback (most recent call last):
...
studylib.errors.FitInputError: tr_ms (ms) must be positive and finite, got -1
"""

from __future__ import annotations

import math

from .errors import FitInputError

__all__ = ["positive_number"]


def positive_number(value, name: str, *, error: type[Exception] = FitInputError, where: str = "") -> float:
    """``value`` as a positive, finite float, else ``error`` naming ``name`` (and ``where``, e.g. the file).

    Parameters
    ----------
    value : anything ``float()`` accepts.
    name : what the value is, with its unit, e.g. ``"tr_ms (ms)"``.
    error : the exception class to raise (a :class:`studylib.errors.StudyError` subclass).
    where : a prefix naming the source, e.g. a file; ``"<where>: "`` is prepended to the message.
    """
    prefix = f"{where}: " if where else ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{prefix}{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise error(f"{prefix}{name} must be positive and finite, got {value!r}")
    return v
