"""Group tests for small animal groups: an ordered trend (Jonckheere-Terpstra, permutation p),
Kruskal-Wallis with Holm-adjusted pairwise Mann-Whitney follow-up, and the paired pre/post change.

The animal is the unit: each function takes one value per animal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .common import StatsInputError, holm

__all__ = ["jonckheere_terpstra", "kruskal_pairwise", "paired_change"]


def jonckheere_terpstra(groups: Sequence, *, alternative: str = "increasing", n_perm: int = 20000,
                        seed: int = 0) -> dict:
    """Jonckheere-Terpstra test for an ordered trend across k independent groups.

    Parameters
    ----------
    groups : sequence of 1-D arrays, in the hypothesised order (e.g. 67NR, 168FARN, 4T1).
    alternative : ``"increasing"`` (default), ``"decreasing"`` or ``"two-sided"``.
    n_perm : permutations for the p-value (exact enough for the small groups of mouse
        studies, where the normal approximation is poor); 0 uses only the normal approximation.
    seed : random seed of the permutations.

    Returns
    -------
    dict: ``statistic`` (J), ``expected`` (E[J] under H0), ``z`` (normal approximation,
    tie-corrected variance), ``p`` (permutation p-value, or normal when ``n_perm == 0``),
    ``p_normal``, ``n`` (group sizes), ``method``.

    Notes
    -----
    ``J = sum_{i<j} sum_{a in G_i, b in G_j} ([b > a] + [b = a]/2)``;
    ``E[J] = (N^2 - sum n_i^2) / 4``; variance with ties after Hollander & Wolfe,
    *Nonparametric Statistical Methods* (1999), eq. 6.19; Jonckheere, Biometrika
    1954;41:133 (doi:10.1093/biomet/41.1-2.133).
    """
    from scipy import stats as sps

    gs = [np.asarray(g, dtype=float).ravel() for g in groups]
    gs = [g[np.isfinite(g)] for g in gs]
    if len(gs) < 2 or any(g.size == 0 for g in gs):
        raise StatsInputError(f"jonckheere_terpstra needs >= 2 groups with finite values, got sizes "
                                 f"{[g.size for g in gs]}")
    if alternative not in ("increasing", "decreasing", "two-sided"):
        raise StatsInputError(f"alternative must be 'increasing', 'decreasing' or 'two-sided', got {alternative!r}")
    n = np.array([g.size for g in gs])
    N = int(n.sum())
    labels = np.repeat(np.arange(len(gs)), n)
    pooled = np.concatenate(gs)

    def _j(vals):  # vals (m, N) -> J per row
        tot = np.zeros(vals.shape[0])
        for i in range(len(gs)):
            a = vals[:, labels == i]
            for j in range(i + 1, len(gs)):
                b = vals[:, labels == j]
                d = b[:, None, :] - a[:, :, None]
                tot += np.sum(d > 0, axis=(1, 2)) + 0.5 * np.sum(d == 0, axis=(1, 2))
        return tot

    J = float(_j(pooled[None, :])[0])
    mean = (N**2 - np.sum(n**2)) / 4.0
    _, t = np.unique(pooled, return_counts=True)
    var = ((N * (N - 1) * (2 * N + 5) - np.sum(n * (n - 1) * (2 * n + 5)) - np.sum(t * (t - 1) * (2 * t + 5))) / 72.0
           + np.sum(n * (n - 1) * (n - 2)) * np.sum(t * (t - 1) * (t - 2)) / (36.0 * N * (N - 1) * (N - 2))
           + np.sum(n * (n - 1)) * np.sum(t * (t - 1)) / (8.0 * N * (N - 1)))
    z = (J - mean) / np.sqrt(var) if var > 0 else 0.0
    if alternative == "increasing":
        p_norm = float(sps.norm.sf(z))
    elif alternative == "decreasing":
        p_norm = float(sps.norm.cdf(z))
    else:
        p_norm = float(2 * sps.norm.sf(abs(z)))
    p = p_norm
    method = "Jonckheere-Terpstra, normal approximation"
    if n_perm:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.broadcast_to(pooled, (int(n_perm), N)), axis=1)
        jp = _j(perms)
        if alternative == "increasing":
            hits = np.sum(jp >= J - 1e-9)
        elif alternative == "decreasing":
            hits = np.sum(jp <= J + 1e-9)
        else:
            hits = np.sum(np.abs(jp - mean) >= abs(J - mean) - 1e-9)
        p = float((hits + 1) / (n_perm + 1))
        method = f"Jonckheere-Terpstra, {n_perm} permutations"
    return dict(statistic=J, expected=float(mean), z=float(z), p=p, p_normal=p_norm, n=n.tolist(), method=method)


def kruskal_pairwise(table: pd.DataFrame, y: str, group: str, order: Sequence[str]) -> tuple[dict, pd.DataFrame]:
    """Kruskal-Wallis across groups plus pairwise Mann-Whitney U tests (Holm-adjusted).

    Returns ``(omnibus, pairs)``: ``omnibus`` a dict (``H``, ``p``), ``pairs`` a table with
    ``a, b, n_a, n_b, median_a, median_b, U, p, p_holm``.
    """
    from scipy import stats as sps

    for c in (y, group):
        if c not in table.columns:
            raise StatsInputError(f"table lacks column '{c}'; it has {list(table.columns)}")
    data = {g: table.loc[table[group] == g, y].astype(float).dropna().to_numpy() for g in order}
    small = {g: v.size for g, v in data.items() if v.size < 2}
    if small:
        raise StatsInputError(f"need at least 2 animals per group for '{y}', got {small}")
    H, p = sps.kruskal(*data.values())
    rows = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            u = sps.mannwhitneyu(data[a], data[b], alternative="two-sided")
            rows.append(dict(a=a, b=b, n_a=data[a].size, n_b=data[b].size, median_a=float(np.median(data[a])),
                             median_b=float(np.median(data[b])), U=float(u.statistic), p=float(u.pvalue)))
    pairs = pd.DataFrame(rows)
    pairs["p_holm"] = holm(pairs["p"].to_numpy())
    return dict(H=float(H), p=float(p), method="Kruskal-Wallis"), pairs


def paired_change(table: pd.DataFrame, y: str, *, pre, post, unit: str = "animal", day: str = "day",
                  alpha: float = 0.05) -> dict:
    """Paired post - pre change of ``y`` per animal: mean, t-based CI, paired t and Wilcoxon p.

    ``table`` has one row per animal and day.  Animals missing either session are dropped
    (and counted in ``n_dropped``).  Returns ``estimate, ci_low, ci_high, p`` (paired t),
    ``p_wilcoxon`` (exact signed-rank), ``n_animals``, ``n_dropped``, ``per_animal``
    (DataFrame with pre, post, change) and ``method``.
    """
    from scipy import stats as sps

    for c in (y, unit, day):
        if c not in table.columns:
            raise StatsInputError(f"table lacks column '{c}'; it has {list(table.columns)}")
    wide = table.pivot_table(index=unit, columns=day, values=y, aggfunc="mean")
    for d in (pre, post):
        if d not in wide.columns:
            raise StatsInputError(f"day {d!r} not in the table's days {list(wide.columns)}")
    per = pd.DataFrame({"pre": wide[pre], "post": wide[post]})
    n_all = len(per)
    per = per.dropna()
    per["change"] = per["post"] - per["pre"]
    n = len(per)
    if n < 2:
        raise StatsInputError(f"need at least 2 animals with both day {pre} and day {post} values of '{y}', got {n}")
    d = per["change"].to_numpy()
    t = sps.ttest_rel(per["post"], per["pre"])
    ci = t.confidence_interval(confidence_level=1 - alpha)
    try:
        pw = float(sps.wilcoxon(d).pvalue)
    except ValueError:
        pw = float("nan")
    return dict(estimate=float(d.mean()), ci_low=float(ci.low), ci_high=float(ci.high), p=float(t.pvalue),
                p_wilcoxon=pw, n_animals=n, n_dropped=n_all - n, per_animal=per,
                method=f"paired t-test, df {n - 1}, n = {n} animals")

