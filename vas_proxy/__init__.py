"""vas_proxy: Value Augmented Sampling for hosted LLMs (see DESIGN.md and README.md)."""

__version__ = "0.1.0"


def wrap(client, *args, **kwargs):
    """Guided copy of an openai client: see `vas_proxy.wrapper.wrap`."""
    from .wrapper import wrap as _wrap

    return _wrap(client, *args, **kwargs)
