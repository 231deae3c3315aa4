"""vas_proxy: Value Augmented Sampling for hosted LLMs (see DESIGN.md and README.md)."""

from ._version import __version__


def wrap(client, *args, **kwargs):
    """Guided copy of an openai client: see `vas_proxy.wrapper.wrap`."""
    from .wrapper import wrap as _wrap

    return _wrap(client, *args, **kwargs)
