"""Reading sources: format readers, validated records, and the pure plan of an incremental ingest."""
