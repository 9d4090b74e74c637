"""Comparison of configurations over seeds: grouping, statistics, tables and figures."""
