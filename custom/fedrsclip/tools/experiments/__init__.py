"""`fedrsclip experiment`: a grid of FLARE simulator runs (grid.py), run into an experiment folder (layout.py) by
runner.py."""
