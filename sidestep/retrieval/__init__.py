"""Recall: FAISS indexes over pooled chunk vectors, and the search path shared by the endpoint and eval."""
