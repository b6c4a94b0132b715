"""Benchmark harness: the proxy against its upstream and a minimal unsigned aiohttp passthrough."""
