"""Drivers and readers around the package: the offline demo, experiment grids and their reports, the benchmark.
They use the core and `fedrsclip.flare`; nothing but `fedrsclip.cli` imports them."""
