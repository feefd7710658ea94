"""Benchmark of batch-terminator against the floor (bare requests) and the peer (azure-batch SDK): `./dev bench`."""
