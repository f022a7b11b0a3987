"""Old path of the CKKS aggregator, named by jobs made before 0.2; use fedrsclip.flare.he.aggregator."""

from .he.aggregator import CKKSAggregator  # noqa: F401
