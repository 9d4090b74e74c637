"""Clustering: scores against held-back labels, k-means on codes, DEC refinement."""
