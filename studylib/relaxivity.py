"""Relaxivities of iron-oxide contrast agents, by field, with their sources.

Relaxivity ``r`` (1/s per mM Fe) links a relaxation-rate change to the agent's iron concentration:
``Delta R = r [Fe]``, so ``[Fe] (mM) = Delta R2* (1/s) / r2* (1/(s mM))``.

Measured values (37 C) come from Knobloch et al., "Relaxivity of ferumoxytol at 1.5 T and 3.0 T",
Invest Radiol 2018;53:257-263, doi:10.1097/RLI.0000000000000434 (saline and human plasma;
the relation in whole blood is nonlinear and is not tabulated here).

Preclinical scanners run at 4.7-11.7 T where no peer-reviewed ferumoxytol r2* is at hand.  The
magnetisation of the iron-oxide cores is saturated well below 1.5 T, so in the static-dephasing
regime r2 and r2* are nearly field independent (Knobloch 2018: r2*, r2 at 1.5 T and 3 T agree
within their errors).  Above 3 T this module therefore *extrapolates* r2* and r2 as the 3 T
value and marks the entry ``"extrapolated"``; r1 falls with field and is not extrapolated
(asking for it raises).  Pass an explicit relaxivity to :func:`studylib.fit.iron_concentration`
when you have a measured one for your field.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import StudyError

__all__ = ["Relaxivity", "FERUMOXYTOL", "relaxivity", "SOURCES"]

SOURCES = {
    "knobloch2018": "Knobloch G, et al. Relaxivity of Ferumoxytol at 1.5 T and 3.0 T. Invest Radiol "
                    "2018;53:257-263. doi:10.1097/RLI.0000000000000434",
}


@dataclass(frozen=True)
class Relaxivity:
    """Relaxivities of one agent at one field, in 1/(s mM Fe); ``None`` where not known."""

    agent: str
    field_T: float
    medium: str
    r1: float | None
    r2: float | None
    r2star: float | None
    source: str
    extrapolated: bool = False


#: ferumoxytol, human plasma at 37 C (closest to tissue of the measured media), by field in tesla
FERUMOXYTOL = {
    1.5: Relaxivity("ferumoxytol", 1.5, "plasma", 19.0, 64.9, 64.4, "knobloch2018"),
    3.0: Relaxivity("ferumoxytol", 3.0, "plasma", 9.5, 65.2, 55.7, "knobloch2018"),
}
_SALINE = {
    1.5: Relaxivity("ferumoxytol", 1.5, "saline", 19.9, 60.8, 60.4, "knobloch2018"),
    3.0: Relaxivity("ferumoxytol", 3.0, "saline", 10.0, 62.3, 57.0, "knobloch2018"),
}
_AGENTS = {("ferumoxytol", "plasma"): FERUMOXYTOL, ("ferumoxytol", "saline"): _SALINE}


def relaxivity(field_T: float, *, agent: str = "ferumoxytol", medium: str = "plasma",
               kind: str = "r2star") -> float:
    """Relaxivity (1/(s mM Fe)) of ``agent`` at ``field_T`` tesla.

    ``kind`` is ``"r1"``, ``"r2"`` or ``"r2star"``.  Fields within 0.05 T of a tabulated one use
    it; fields above 3 T use the 3 T r2/r2* (saturated magnetisation, see the module notes);
    anything else (below 1.5 T, between 1.5 and 3 T, r1 above 3 T) raises :class:`StudyError`.
    """
    key = (str(agent).lower(), str(medium).lower())
    if key not in _AGENTS:
        raise StudyError(f"relaxivity: no table for agent={agent!r}, medium={medium!r}; known: "
                         f"{sorted(_AGENTS)}")
    if kind not in ("r1", "r2", "r2star"):
        raise StudyError(f"relaxivity: kind must be 'r1', 'r2' or 'r2star', got {kind!r}")
    try:
        b0 = float(field_T)
    except (TypeError, ValueError):
        raise StudyError(f"relaxivity: field_T must be a number in tesla, got {field_T!r}") from None
    if not b0 > 0:
        raise StudyError(f"relaxivity: field_T must be positive tesla, got {field_T!r}")
    table = _AGENTS[key]
    for f, entry in table.items():
        if abs(f - b0) <= 0.05:
            return float(getattr(entry, kind))
    top = max(table)
    if b0 > top and kind in ("r2", "r2star"):
        return float(getattr(table[top], kind))
    raise StudyError(f"relaxivity: no {kind} of {agent} in {medium} at {b0} T (tabulated: "
                     f"{sorted(table)} T; r2/r2* extrapolated above {top} T only); pass a measured value")
