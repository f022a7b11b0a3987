"""Baselines that are not prompt learning: the paper's full-model FedAvg (a timm image classifier)."""
