"""Tumour growth: log-volume mixed model, growth rate per group with doubling time, and T/C ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .common import StatsInputError, numeric_column, require_columns
from .mixed import MixedModelResult, mixed_model

__all__ = ["GrowthResult", "tumour_growth"]


@dataclass
class GrowthResult:
    """Tumour growth analysis.

    ``model``: the log-volume :class:`MixedModelResult`; ``rates``: per group
    ``rate_per_day`` (d log V / d day) with ``se, df, ci_low, ci_high`` and
    ``doubling_time_days`` (``ln 2 / rate``) with its CI (the rate CI transformed; infinite
    where the rate CI reaches 0); ``tc``: per treated group and day the T/C ratio
    (geometric-mean volume treated / control) with ``ci_low, ci_high, log_ratio, se, df, p``.
    """

    model: MixedModelResult
    rates: pd.DataFrame
    tc: pd.DataFrame
    control: object


def tumour_growth(data: pd.DataFrame, *, volume: str = "volume_mm3", group: str = "group", day: str = "day",
                  animal: str = "animal", control=None, tc_days: Sequence | None = None, re_formula: str | None = None,
                  ddf: str = "satterthwaite", floor_mm3: float | None = None, ci: float = 0.95,
                  optimizers: Sequence[str] | str = "auto", warn: bool = True) -> GrowthResult:
    """Exponential tumour growth by a mixed model on log volume.

    Model: ``log V_ij = (a + a_g) + (k + k_g) t_ij + b0_i + b1_i t_ij + e_ij`` -- fixed
    group x day, random intercept and slope per animal (``re_formula`` default ``~day``),
    fitted by :func:`mixed_model` (Satterthwaite df by default).

    * growth rate of group ``g``: ``k + k_g`` (1/day), doubling time ``ln 2 / rate``;
    * T/C ratio at day ``t``: ``exp(E[log V | g, t] - E[log V | control, t])``, the ratio of
      the model's geometric-mean volumes.  Its CI is the t-based CI of the log-scale
      difference transformed by ``exp`` (exact transformation of the log-scale interval;
      the delta-method SE of the ratio would be ``T/C x se``), so it is never negative and
      is asymmetric as a ratio should be (see e.g. Hather et al. 2014,
      doi:10.4137/CIN.S13974, for growth-curve T/C analyses).

    Volumes must be > 0; zero volumes (a regressed tumour) raise unless ``floor_mm3``
    is given (then values below it are set to it, recorded in the model warnings).
    """
    require_columns(data, [volume, group, day, animal], what="tumour_growth")
    v = numeric_column(data, volume, role="volume")
    df = data.copy()
    nonpos = np.isfinite(v) & (v <= 0)
    if nonpos.any():
        if floor_mm3 is None:
            bad = df.loc[nonpos, [animal, day]].head(5).to_dict("records")
            raise StatsInputError(f"column '{volume}' has {int(nonpos.sum())} volume(s) <= 0 (e.g. {bad}); the log "
                                  "is undefined -- pass floor_mm3 (e.g. the detection limit) to floor them")
        if not floor_mm3 > 0:
            raise StatsInputError(f"floor_mm3 must be > 0, got {floor_mm3!r}")
    if floor_mm3 is not None:
        v = np.where(np.isfinite(v), np.maximum(v, floor_mm3), v)
    df["log_volume"] = np.log(v)
    levels = list(df[group].cat.categories) if isinstance(df[group].dtype, pd.CategoricalDtype) else \
        sorted(pd.unique(df[group].dropna()), key=str)
    if control is None:
        control = levels[0]
    if control not in levels:
        raise StatsInputError(f"control {control!r} is not a level of '{group}' (levels {levels})")
    if len(levels) < 2:
        raise StatsInputError(f"column '{group}' has one level {levels}; growth comparisons need two or more groups")
    df[group] = pd.Categorical(df[group], categories=[control] + [lv for lv in levels if lv != control])
    res = mixed_model(df, f"log_volume ~ {group} * {day}", animal, re_formula, ddf=ddf, time=day, ci=ci,
                      optimizers=optimizers, warn=warn)
    if floor_mm3 is not None and (np.asarray(data[volume], dtype=float) < floor_mm3).any():
        res.warnings.append(f"{int((np.asarray(data[volume], dtype=float) < floor_mm3).sum())} volume(s) below "
                            f"floor_mm3={floor_mm3} were set to it before the log")
    # rates: prediction at day 1 minus day 0 for each group
    rows, Ls = [], []
    for lv in df[group].cat.categories:
        x1 = res._grid_rows(pd.DataFrame([{group: lv, day: 1.0}]))[0]
        x0 = res._grid_rows(pd.DataFrame([{group: lv, day: 0.0}]))[0]
        Ls.append(x1 - x0)
        rows.append({group: lv})
    tab = res._rows(np.vstack(Ls), list(range(len(Ls))), res._method(None), ci).reset_index(drop=True)
    rates = pd.concat([pd.DataFrame(rows), tab[["estimate", "se", "df", "ci_low", "ci_high"]]], axis=1)
    rates = rates.rename(columns={"estimate": "rate_per_day"})
    ln2 = math.log(2)

    def dt(r):
        return ln2 / r if r > 0 else np.inf

    rates["doubling_time_days"] = [dt(r) for r in rates.rate_per_day]
    rates["doubling_ci_low"] = [dt(h) for h in rates.ci_high]
    rates["doubling_ci_high"] = [dt(lo) for lo in rates.ci_low]
    if tc_days is None:
        tc_days = [float(np.nanmax(df[day]))]
    tvc = res.treatment_vs_control(group, control, at={day: list(tc_days)}, ci=ci)
    tc = pd.DataFrame({group: [c.split(" - ")[0] for c in tvc.contrast], day: tvc[day],
                       "tc_ratio": np.exp(tvc.estimate), "ci_low": np.exp(tvc.ci_low), "ci_high": np.exp(tvc.ci_high),
                       "log_ratio": tvc.estimate, "se": tvc.se, "df": tvc.df, "p": tvc.p})
    return GrowthResult(res, rates, tc, control)
