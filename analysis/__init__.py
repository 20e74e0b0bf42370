"""Analyses of trained rankrobust models: popularity fairness, prediction variance, DRO."""
