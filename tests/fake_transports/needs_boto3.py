"""A transport module whose import fails as it would without ``boto3`` installed."""

raise ImportError("No module named 'boto3'", name="boto3")
