"""Evaluation: metrics, BEIR readers and the long-document evidence benchmark."""
