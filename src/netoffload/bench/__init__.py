"""Benchmarks behind `netoffload bench`: ratios measured side by side in one run."""
