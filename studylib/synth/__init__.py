"""Synthetic preclinical MRI studies with known truth (digital mouse phantoms).

``generate(preset, out=None, seed=None, manifest=None)`` writes, for all seven experiments,
raw NIfTI + JSON sidecars, ROI label maps and histology tables under ``<out>/raw/<study>/``
(the layout of ``docs/conventions.md``), the truth under ``<out>/truth/<study>/``
(``truth.json``: design, per-animal biology, per-session ROI means, true effects and
correlations; ``sessions.csv``; ``maps/<animal>_dayNN.npz`` true parameter maps) and the
manifest.  Signals come from independent physics (:mod:`studylib.synth.physics`, its own code: no
``studylib.models`` or ``studylib.fit`` signal model is used, so the fits' model error shows): static dephasing
by iron-laden spheres (MEGRE), continuous-time extended Tofts with per-animal AIFs and a B1 field (VFA, DCE,
B1map), Bloch-McConnell Z-spectra (CEST, WASSR), the bSSFP Bloch steady state (F19); the writer adds complex Gaussian noise (SD ``sigma`` per channel) on L receive channels with smooth
normalised sensitivities, combined by root-sum-of-squares (``ReceiveCoilChannels`` in the sidecar: 4 for
the 1H studies, 1 for ``fluorine19_pfc``; L = 1 is Rician noise), and writes ``roi.nii.gz`` as a simulated
rater draws it (tumours and muscle outlined with a smooth boundary error of 1 voxel RMS,
:func:`studylib.synth.physics.acquisition.rater_labels`; the true label map stays in ``truth/``).  Every
(study, animal, day) draws from its own ``numpy.random.default_rng([seed, crc32(study),
stream, ids])``.  Output bytes are identical on every run.  Sidecars carry acquisition parameters
only (the experimenter's knowledge); every simulated value stays in ``truth/`` (issue 14, checked by
``tests/test_synth.py`` against ``truth.json``).

=====================  =============================  ======================================  =============
study                   kinds                          groups (demo animals per group)          days
=====================  =============================  ======================================  =============
ampb_ferumoxytol        MEGRE (9.4 T, 12 echoes)       vehicle, ampb (7)                        0, 3, 7, 10 post;
                                                                                                 -1, 2, 6, 9 pre
blz945_femri            MEGRE (7 T, 3..48 ms)          control, blz945 x TS1, 99LN (6 each)     0, 3, 7
ferumoxytol_therapy     T2w, MEGRE (7 T, 10 echoes)    control, ferumoxytol (7); bilateral      0, 1, 7, 14, 21
collagen_adc            DWI b 0..1000                  BK-12, ED-15, HL-16, LA-19 (8)           0
ktrans_hypoxia          VFA, DCE, B1map (+ vessel)     BK-12, ED-15, HL-16, LA-19 (6)           0
fluorine19_pfc          F19, T2w (+ reference tube)    67NR, 168FARN, 4T1 (6)                   1
lactate_cest            CEST, WASSR                    pyruvate (3)                             0 pre, 1 post
=====================  =============================  ======================================  =============

Presets: ``ci`` 16 x 16 x 2 voxels, 3 animals per group, at most 3 days; ``demo`` 64 x 64 x 6;
``large`` 128 x 128 x 12 with twice the animals.  The geometry is in mm (FOV 16 mm, 20 mm for
the bilateral study; 6 mm in z), so presets differ only in sampling.  In every longitudinal
study one animal misses its last day (death/failed scan), so it has no rows for that day.

ROI labels follow the conventions (1 tumour, 2 muscle, 3 vessel, 4 reference tube,
5 background air), except ``ferumoxytol_therapy`` where the two tumours are 1 (left,
x < 0) and 6 (right), named in ``roi.json``.  NIfTI arrays are in NIfTI order
``(x, y, z[, n])``.  The detailed parameter tables are in the docstrings of
:mod:`._iron`, :mod:`._perfusion` and :mod:`._molecular`.
"""

from ._common import DEFAULT_SEED, PRESETS, Preset
from ._generate import MANIFEST_COLUMNS, STUDIES, STUDY_KINDS, SynthError, generate, plan

__all__ = ["generate", "plan", "STUDIES", "PRESETS", "Preset", "DEFAULT_SEED", "MANIFEST_COLUMNS", "STUDY_KINDS",
           "SynthError"]
