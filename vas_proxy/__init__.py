"""vas_proxy: Value Augmented Sampling for hosted LLMs (see README.md and docs/design.md)."""

from ._version import __version__  # noqa: F401  (re-exported)


def wrap(client, *args, **kwargs):
    """Guided copy of an openai client: see `vas_proxy.wrapper.wrap`."""
    from .wrapper import wrap as _wrap

    return _wrap(client, *args, **kwargs)
