"""vas_proxy: Value Augmented Sampling for hosted LLMs (see DESIGN.md and README.md)."""

__version__ = "0.1.0"
