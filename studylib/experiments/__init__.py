"""One module per experiment notebook: what only that notebook needs (its conclusions rows, a
tumour-label map, a table of its own) and nothing a second notebook needs.

A notebook imports its own module (``from studylib.experiments import ampb_ferumoxytol as exp``);
every generic step is in :mod:`studylib.analysis` and reachable from the facade (``sl.roi_tables``).
The experiment list, titles and citations are :data:`studylib.catalog.EXPERIMENTS`.
"""
