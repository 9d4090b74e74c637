"""Adversarial robustness of classifiers: L∞ attacks in pixel space (`attacks`)."""
