"""Evaluation: metrics with bootstrap confidence intervals, paired tests, survival analysis."""
