"""Accelerate training recipes and their losses."""
