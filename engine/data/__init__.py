"""Training data: the corpus format, the synthetic generator and real-video preparation."""
