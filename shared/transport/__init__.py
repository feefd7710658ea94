"""HTTP sessions the Batch and Storage adapters share: pooled, and the environment (proxies, CA bundle) read once."""
