"""A transport module whose import fails as it would without ``redis`` installed."""

raise ImportError("No module named 'redis'", name="redis")
