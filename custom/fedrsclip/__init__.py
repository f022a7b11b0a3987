"""FedRSCLIP: federated dual-prompt learning of a frozen CLIP for remote-sensing scene classification."""

__version__ = "0.1.0"
