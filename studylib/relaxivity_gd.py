"""Longitudinal relaxivity r1 of gadolinium chelates, by field, with their source.

``R1 = R10 + r1 C`` (fast exchange) turns an R1 change into a concentration, so r1 at the
scanner's field is needed for every DCE concentration.  Values (1/(mM s)) are those of
Rohrer et al., "Comparison of magnetic properties of MRI contrast media solutions at
different magnetic field strengths", Invest Radiol 2005;40:715-724,
doi:10.1097/01.rli.0000184756.66360.d3, measured in human plasma at 37 C at 0.47, 1.5, 3
and 4.7 T.  Check them against the paper before quoting them in a publication.

For the three macrocyclic agents the table continues to 7 T with the human-plasma, 37 C values of
Szomolanyi et al., "Comparison of the relaxivities of macrocyclic gadolinium-based contrast agents in
human plasma at 1.5, 3, and 7 T, and blood at 3 T", Invest Radiol 2019;54:559-564,
doi:10.1097/RLI.0000000000000577 (gadobutrol 3.83, gadoteridol 3.21, gadoterate 2.84 1/(mM s));
between 4.7 and 7 T the value is interpolated across the two sources.

Preclinical scanners (7-11.7 T) lie at or above the table's end.  r1 of small, non-protein-binding
chelates falls slowly above 3 T, so the 4.7 T value is a reasonable *approximation* there;
it is only used when asked for with ``beyond_table="hold"`` (the result then says so) --
by default a field outside the table raises, so that nobody takes an extrapolated r1 for a
measured one.  Pass a measured r1 straight to the concentration functions when you have it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StudyError

__all__ = ["R1Value", "R1_GD_PLASMA_37C", "AGENT_ALIASES", "RelaxivityError", "r1_gd", "SOURCE", "SOURCE_7T", "R1_GD_PLASMA_37C_7T"]

SOURCE = ("Rohrer M, Bauer H, Mintorovitch J, Requardt M, Weinmann HJ. Comparison of magnetic properties "
          "of MRI contrast media solutions at different magnetic field strengths. Invest Radiol "
          "2005;40:715-724. doi:10.1097/01.rli.0000184756.66360.d3")

SOURCE_7T = ("Szomolanyi P, Rohrer M, Frenzel T, et al. Comparison of the relaxivities of macrocyclic "
             "gadolinium-based contrast agents in human plasma at 1.5, 3, and 7 T, and blood at 3 T. Invest "
             "Radiol 2019;54:559-564. doi:10.1097/RLI.0000000000000577")


class RelaxivityError(StudyError):
    """An agent or field for which no r1 is tabulated."""


@dataclass(frozen=True)
class R1Value:
    """r1 of one agent at one field, 1/(mM s); ``extrapolated`` if held beyond the table."""

    agent: str
    field_T: float
    r1_per_mM_s: float
    source: str
    extrapolated: bool = False


#: field (T) -> r1 (1/(mM s)) in human plasma, 37 C (Rohrer et al. 2005)
R1_GD_PLASMA_37C = {
    "gadopentetate": {0.47: 3.8, 1.5: 4.1, 3.0: 3.7, 4.7: 3.8},   # Gd-DTPA, Magnevist
    "gadoterate": {0.47: 3.4, 1.5: 3.6, 3.0: 3.5, 4.7: 3.3},      # Gd-DOTA, Dotarem
    "gadodiamide": {0.47: 3.9, 1.5: 4.3, 3.0: 4.0, 4.7: 3.9},     # Gd-DTPA-BMA, Omniscan
    "gadoteridol": {0.47: 3.7, 1.5: 4.1, 3.0: 3.7, 4.7: 3.7},     # Gd-HP-DO3A, ProHance
    "gadobutrol": {0.47: 6.1, 1.5: 5.2, 3.0: 5.0, 4.7: 4.7},      # Gd-BT-DO3A, Gadovist
    "gadobenate": {0.47: 9.2, 1.5: 6.3, 3.0: 5.5, 4.7: 5.2},      # Gd-BOPTA, MultiHance
    "gadoxetate": {0.47: 8.7, 1.5: 6.9, 3.0: 6.2, 4.7: 5.6},      # Gd-EOB-DTPA, Primovist
}

#: 7 T r1 (1/(mM s)) in human plasma, 37 C (Szomolanyi et al. 2019), appended to the table above
R1_GD_PLASMA_37C_7T = {"gadobutrol": 3.83, "gadoteridol": 3.21, "gadoterate": 2.84}
for _agent, _r1 in R1_GD_PLASMA_37C_7T.items():
    R1_GD_PLASMA_37C[_agent] = {**R1_GD_PLASMA_37C[_agent], 7.0: _r1}
del _agent, _r1

AGENT_ALIASES = {
    "gd-dtpa": "gadopentetate", "magnevist": "gadopentetate", "gadopentetic acid": "gadopentetate",
    "gd-dota": "gadoterate", "dotarem": "gadoterate", "gadoteric acid": "gadoterate",
    "gd-dtpa-bma": "gadodiamide", "omniscan": "gadodiamide",
    "gd-hp-do3a": "gadoteridol", "prohance": "gadoteridol",
    "gd-bt-do3a": "gadobutrol", "gadovist": "gadobutrol", "gadavist": "gadobutrol",
    "gd-bopta": "gadobenate", "multihance": "gadobenate",
    "gd-eob-dtpa": "gadoxetate", "primovist": "gadoxetate", "eovist": "gadoxetate",
}


def r1_gd(agent: str, field_T: float, *, beyond_table: str = "raise") -> R1Value:
    """r1 of a gadolinium agent at a field strength (plasma, 37 C).

    Linear interpolation between tabulated fields.  Outside 0.47-4.7 T:
    ``beyond_table="raise"`` (default) raises :class:`RelaxivityError`; ``"hold"`` returns
    the nearest tabulated value flagged ``extrapolated=True``.

    Examples
    --------
    >>> r1_gd("Gd-DTPA", 1.5).r1_per_mM_s
    4.1
    >>> r1_gd("gadoterate", 9.4, beyond_table="hold").extrapolated
    True
    """
    key = str(agent).strip().lower()
    key = AGENT_ALIASES.get(key, key)
    if key not in R1_GD_PLASMA_37C:
        known = sorted(set(R1_GD_PLASMA_37C) | set(AGENT_ALIASES))
        raise RelaxivityError(f"agent {agent!r}: no r1 tabulated; known agents: {known}. "
                              "Pass a measured r1 (1/(mM s)) instead.")
    try:
        b0 = float(field_T)
    except (TypeError, ValueError):
        raise RelaxivityError(f"field_T must be a number in tesla, got {field_T!r}") from None
    if not np.isfinite(b0) or b0 <= 0:
        raise RelaxivityError(f"field_T must be positive, got {field_T!r}")
    if beyond_table not in ("raise", "hold"):
        raise RelaxivityError(f"beyond_table must be 'raise' or 'hold', got {beyond_table!r}")
    tab = R1_GD_PLASMA_37C[key]
    fields = np.array(sorted(tab))
    vals = np.array([tab[f] for f in fields])
    source = SOURCE + ("; " + SOURCE_7T if key in R1_GD_PLASMA_37C_7T and b0 > 4.7 else "")
    if fields[0] <= b0 <= fields[-1]:
        return R1Value(key, b0, float(np.round(np.interp(b0, fields, vals), 6)), source)
    if beyond_table == "raise":
        raise RelaxivityError(
            f"{key} r1 is tabulated for {fields[0]}-{fields[-1]} T only, asked for {b0} T; pass "
            "beyond_table='hold' to use the nearest tabulated value (an approximation), or a measured r1")
    near = fields[0] if b0 < fields[0] else fields[-1]
    return R1Value(key, b0, float(tab[near]), source + f" (value at {near} T held)", extrapolated=True)
