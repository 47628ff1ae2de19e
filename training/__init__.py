"""Workstation side: data loading, leaf-grouped splits, training, evaluation, studies."""
