"""Text: the frozen sentence encoder, token-window chunking, and the lexical (BM25) ranker."""
