"""Document maps (MiA-RAG on a CPU): sections, section summaries and one global summary per document."""
