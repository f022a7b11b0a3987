"""The report of an experiment folder (`fedrsclip experiment`): a markdown table laid out like the paper's Tables
II-VII and PNG figures. `write_report(folder)` writes `report.md` and the figures into the folder."""

from __future__ import annotations

from .report import write_report

__all__ = ["write_report"]
