"""Benchmarks behind `netoffload bench`: ratios measured side by side in one run."""


def number(result: dict[str, object], key: str) -> float:
    """``result[key]``, a figure a benchmark put in its JSON result, as a float."""
    value = result[key]
    assert isinstance(value, int | float)
    return float(value)
