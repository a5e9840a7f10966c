"""Recommendation: OPQ/PQ codes, learnable lookup tables, code alignment, training and leave-one-out data."""
