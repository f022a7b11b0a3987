"""FedRSCLIP on NVIDIA FLARE: the components a config-based FLARE job names (executor, persistor, results), plus
the offline demo and the results report.

The job folder is jobs/fedrsclip/. Importing this package does not import FLARE; its modules do.
"""
