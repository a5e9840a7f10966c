"""The verifier: a small Transformer over token x token similarity maps, its query adapter, structural
near-misses, title pseudo-queries, and the compiled similarity-map kernels."""
