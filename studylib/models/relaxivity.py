"""Relaxivities of contrast agents by field, with their sources: one table, one function, one result.

Relaxivity ``r`` (1/(s mM)) links a relaxation-rate change to the agent's concentration in the fast-exchange,
linear regime: ``Delta R = r C``.  So ``C (mM) = Delta R1 / r1`` for a gadolinium chelate (every DCE
concentration) and ``[Fe] (mM) = Delta R2* / r2*`` for an iron oxide.

Sources
-------
Gadolinium chelates, r1 in human plasma at 37 C: Rohrer et al., "Comparison of magnetic properties of MRI
contrast media solutions at different magnetic field strengths", Invest Radiol 2005;40:715-724,
doi:10.1097/01.rli.0000184756.66360.d3 (0.47, 1.5, 3, 4.7 T); for the macrocyclic agents also 7 T from
Szomolanyi et al., Invest Radiol 2019;54:559-564, doi:10.1097/RLI.0000000000000577.  r1 of small chelates
falls slowly above 3 T; a field beyond the table raises unless ``beyond_table="hold"`` (then the nearest
tabulated value is returned, flagged ``extrapolated``).

Ferumoxytol, r1/r2/r2* in human plasma and saline at 37 C: Knobloch et al., "Relaxivity of ferumoxytol at
1.5 T and 3.0 T", Invest Radiol 2018;53:257-263, doi:10.1097/RLI.0000000000000434.  Preclinical scanners run
at 4.7-11.7 T where no peer-reviewed ferumoxytol r2* is at hand.  The iron-oxide cores' magnetisation is
saturated well below 1.5 T, so in the static-dephasing regime r2 and r2* are nearly field independent
(Knobloch 2018: 1.5 T and 3 T agree within their errors): above 3 T the 3 T r2/r2* is *held* — a documented
extrapolation, flagged ``extrapolated`` in the result and carried into the maps' attributes.  r1 falls with
field and is never extrapolated.

Between tabulated fields the value is interpolated linearly (``how="interpolated"``).  Pass a measured
relaxivity to the concentration functions when you have one for your field and medium.

>>> r = relaxivity("Gd-DTPA", 1.5)
>>> r.value_per_mM_s, r.how
(4.1, 'tabulated')
>>> r = relaxivity("ferumoxytol", 9.4, kind="r2star")
>>> r.value_per_mM_s, r.extrapolated
(55.7, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import positive_number
from ..errors import RelaxivityError

__all__ = ["Relaxivity", "RelaxivityError", "relaxivity", "TABLE", "AGENT_ALIASES", "SOURCES"]

SOURCES = {
    "rohrer2005": "Rohrer M, Bauer H, Mintorovitch J, Requardt M, Weinmann HJ. Comparison of magnetic properties "
                  "of MRI contrast media solutions at different magnetic field strengths. Invest Radiol "
                  "2005;40:715-724. doi:10.1097/01.rli.0000184756.66360.d3",
    "szomolanyi2019": "Szomolanyi P, Rohrer M, Frenzel T, et al. Comparison of the relaxivities of macrocyclic "
                      "gadolinium-based contrast agents in human plasma at 1.5, 3, and 7 T, and blood at 3 T. "
                      "Invest Radiol 2019;54:559-564. doi:10.1097/RLI.0000000000000577",
    "knobloch2018": "Knobloch G, et al. Relaxivity of Ferumoxytol at 1.5 T and 3.0 T. Invest Radiol "
                    "2018;53:257-263. doi:10.1097/RLI.0000000000000434",
}


@dataclass(frozen=True)
class Relaxivity:
    """One relaxivity: ``value_per_mM_s`` (1/(s mM)) of ``agent`` for ``kind`` at ``field_T`` in ``medium``.

    ``how`` says how it was obtained: ``"tabulated"`` (a measured field), ``"interpolated"`` (linear between
    two measured fields), ``"held"`` (the nearest measured field's value, asked for with
    ``beyond_table="hold"``) or ``"extrapolated"`` (held by a documented physical argument, e.g. ferumoxytol
    r2* above 3 T).  ``extrapolated`` is True for the last two: the value was not measured at this field.
    """

    agent: str
    kind: str
    field_T: float
    medium: str
    value_per_mM_s: float
    how: str
    source: str
    note: str = ""

    @property
    def extrapolated(self) -> bool:
        return self.how in ("held", "extrapolated")

    @property
    def r1_per_mM_s(self) -> float:
        """The value, under the name the concentration functions take (for ``kind="r1"``)."""
        if self.kind != "r1":
            raise RelaxivityError(f"{self.agent} {self.kind} is not an r1")
        return self.value_per_mM_s


# agent -> medium -> kind -> {field_T: value}; plus per (agent, kind) the source key(s) and any justified hold
_GD = {  # r1 in human plasma, 37 C (Rohrer et al. 2005; 7 T: Szomolanyi et al. 2019)
    "gadopentetate": {0.47: 3.8, 1.5: 4.1, 3.0: 3.7, 4.7: 3.8},   # Gd-DTPA, Magnevist
    "gadoterate": {0.47: 3.4, 1.5: 3.6, 3.0: 3.5, 4.7: 3.3, 7.0: 2.84},      # Gd-DOTA, Dotarem
    "gadodiamide": {0.47: 3.9, 1.5: 4.3, 3.0: 4.0, 4.7: 3.9},     # Gd-DTPA-BMA, Omniscan
    "gadoteridol": {0.47: 3.7, 1.5: 4.1, 3.0: 3.7, 4.7: 3.7, 7.0: 3.21},     # Gd-HP-DO3A, ProHance
    "gadobutrol": {0.47: 6.1, 1.5: 5.2, 3.0: 5.0, 4.7: 4.7, 7.0: 3.83},      # Gd-BT-DO3A, Gadovist
    "gadobenate": {0.47: 9.2, 1.5: 6.3, 3.0: 5.5, 4.7: 5.2},      # Gd-BOPTA, MultiHance
    "gadoxetate": {0.47: 8.7, 1.5: 6.9, 3.0: 6.2, 4.7: 5.6},      # Gd-EOB-DTPA, Primovist
}
#: agent -> medium -> kind -> {field (T): relaxivity (1/(s mM))}
TABLE: dict[str, dict[str, dict[str, dict[float, float]]]] = {
    **{agent: {"plasma": {"r1": r1}} for agent, r1 in _GD.items()},
    "ferumoxytol": {  # Knobloch et al. 2018, 37 C
        "plasma": {"r1": {1.5: 19.0, 3.0: 9.5}, "r2": {1.5: 64.9, 3.0: 65.2}, "r2star": {1.5: 64.4, 3.0: 55.7}},
        "saline": {"r1": {1.5: 19.9, 3.0: 10.0}, "r2": {1.5: 60.8, 3.0: 62.3}, "r2star": {1.5: 60.4, 3.0: 57.0}},
    },
}
#: (agent, kind) held above the table's last field by a physical argument (see the module notes)
_HOLD_ABOVE = {("ferumoxytol", "r2"): "saturated iron-oxide magnetisation: r2 field independent above 1.5 T",
               ("ferumoxytol", "r2star"): "saturated iron-oxide magnetisation: r2* field independent above 1.5 T"}

AGENT_ALIASES = {
    "gd-dtpa": "gadopentetate", "magnevist": "gadopentetate", "gadopentetic acid": "gadopentetate",
    "gd-dota": "gadoterate", "dotarem": "gadoterate", "gadoteric acid": "gadoterate",
    "gd-dtpa-bma": "gadodiamide", "omniscan": "gadodiamide",
    "gd-hp-do3a": "gadoteridol", "prohance": "gadoteridol",
    "gd-bt-do3a": "gadobutrol", "gadovist": "gadobutrol", "gadavist": "gadobutrol",
    "gd-bopta": "gadobenate", "multihance": "gadobenate",
    "gd-eob-dtpa": "gadoxetate", "primovist": "gadoxetate", "eovist": "gadoxetate",
    "feraheme": "ferumoxytol", "rienso": "ferumoxytol",
}
_TOLERANCE_T = 0.05  # a field within this of a tabulated one is that field


def _source(agent: str, fields) -> str:
    if agent == "ferumoxytol":
        return SOURCES["knobloch2018"]
    return SOURCES["rohrer2005"] + ("; " + SOURCES["szomolanyi2019"] if max(fields) > 4.7 else "")


def relaxivity(agent: str, field_T: float, *, kind: str = "r1", medium: str = "plasma",
               beyond_table: str = "raise") -> Relaxivity:
    """The relaxivity of ``agent`` for ``kind`` (``"r1"``, ``"r2"``, ``"r2star"``) at ``field_T`` tesla.

    Parameters
    ----------
    agent : name or alias (``"gadoterate"``, ``"Dotarem"``, ``"Gd-DOTA"``, ``"ferumoxytol"``...).
    field_T : main field in tesla (> 0).
    kind : which relaxivity.
    medium : ``"plasma"`` (default) or, for ferumoxytol, ``"saline"``.
    beyond_table : a field outside the measured range: ``"raise"`` (default) a :class:`RelaxivityError`,
        or ``"hold"`` the nearest measured value (flagged ``extrapolated``).  Ferumoxytol r2/r2* above
        3 T are held in either case, by the documented physical argument of the module notes.

    Returns
    -------
    Relaxivity
        Value in 1/(s mM) with how it was obtained and the source.
    """
    key = AGENT_ALIASES.get(str(agent).strip().lower(), str(agent).strip().lower())
    if key not in TABLE:
        raise RelaxivityError(f"agent {agent!r}: no relaxivity tabulated; known agents: "
                              f"{sorted(set(TABLE) | set(AGENT_ALIASES))}. Pass a measured value instead.")
    med = str(medium).strip().lower()
    if med not in TABLE[key]:
        raise RelaxivityError(f"{key}: no relaxivity in medium {medium!r}; tabulated media: {sorted(TABLE[key])}")
    if kind not in TABLE[key][med]:
        raise RelaxivityError(f"{key} in {med}: no {kind!r} tabulated (have {sorted(TABLE[key][med])}); "
                              f"kind must be one of 'r1', 'r2', 'r2star'")
    if beyond_table not in ("raise", "hold"):
        raise RelaxivityError(f"beyond_table must be 'raise' or 'hold', got {beyond_table!r}")
    b0 = positive_number(field_T, "field_T (tesla)", error=RelaxivityError)
    tab = TABLE[key][med][kind]
    fields = np.array(sorted(tab))
    vals = np.array([tab[f] for f in fields])
    source = _source(key, fields)
    near = fields[np.argmin(np.abs(fields - b0))]
    if abs(near - b0) <= _TOLERANCE_T:
        return Relaxivity(key, kind, b0, med, float(tab[near]), "tabulated", source)
    if fields[0] < b0 < fields[-1]:
        return Relaxivity(key, kind, b0, med, float(np.round(np.interp(b0, fields, vals), 6)), "interpolated",
                          source)
    end = fields[0] if b0 < fields[0] else fields[-1]
    reason = _HOLD_ABOVE.get((key, kind)) if b0 > fields[-1] else None
    if reason is not None:
        return Relaxivity(key, kind, b0, med, float(tab[end]), "extrapolated", source,
                          note=f"{end:g} T value held: {reason}")
    if beyond_table == "raise":
        raise RelaxivityError(
            f"{key} {kind} is tabulated for {fields[0]:g}-{fields[-1]:g} T only, asked for {b0:g} T; pass "
            "beyond_table='hold' to use the nearest tabulated value (an approximation), or a measured value")
    return Relaxivity(key, kind, b0, med, float(tab[end]), "held", source, note=f"{end:g} T value held")
