"""Reading results: one run's per-round table (run_table.py), and an experiment folder's report (report.py: a
markdown table laid out like the paper's Tables II-VII, with PNG figures). Importing this package imports neither
matplotlib nor FLARE."""
