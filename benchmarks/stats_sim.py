"""Null simulation of studylib.stats' group x day test (type I error), written to benchmarks/results/stats_sim.json.

Two arms (6 control, 5 treated animals), days 0/3/7/10/14 with random missed sessions, truth:
random intercept (SD 0.3) and slope (SD 0.05/day), residual SD 0.15, NO group difference.
Rejection rates at alpha 0.05 of: random intercept+slope with Satterthwaite (default) and
Kenward-Roger df, the same fit with a z test, and a random-intercept-only model.

Run: .venv/bin/python benchmarks/stats_sim.py [n_sim]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from studylib import stats as st

if __name__ == "__main__":
    n_sim = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    design = pd.DataFrame([{"animal": f"{g}-{i}", "group": g, "day": d}
                           for g, n in (("control", 6), ("treated", 5)) for i in range(n) for d in (0, 3, 7, 10, 14)])
    t0 = time.perf_counter()
    sim = st.simulate_rejection(
        design, "y ~ group * day", term="group[T.treated]:day",
        fixed={"Intercept": 4.5, "group[T.treated]": 0.0, "day": 0.15, "group[T.treated]:day": 0.0},
        cov_re=np.diag([0.3 ** 2, 0.05 ** 2]), residual_var=0.15 ** 2,
        keep_prob={0: 1.0, 3: 0.95, 7: 0.9, 10: 0.85, 14: 0.8},
        analyses={"ris_satterthwaite": ("~day", "satterthwaite"), "ris_kenward_roger": ("~day", "kenward-roger"),
                  "ris_z": ("~day", "z"), "ri_satterthwaite": ("~1", "satterthwaite")},
        n_sim=n_sim, seed=2024)
    secs = time.perf_counter() - t0
    print(sim.table.to_string(index=False))
    print(f"{n_sim} studies in {secs:.1f} s")
    out = Path(__file__).parent / "results" / "stats_sim.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"n_sim": n_sim, "seconds": round(secs, 1), "settings": sim.settings,
                               "table": sim.table.to_dict("records")}, indent=2, default=float))
