"""valleys: the E optimizer adaptor and ALTO for PyTorch."""
