"""Progress on stderr for slow steps, so stdout stays the answer; and `quiet_third_party`, the one
place that hushes what the libraries under us print while models load (`--quiet`, `wrap`)."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def step(message: str, *, enabled: bool = True):
    """Print `message…` before a slow step and its duration after, on stderr."""
    if not enabled:
        yield
        return
    print(f"{message}…", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f" done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)


# Libraries whose warnings are load-time noise for our users (deprecations inside transformers
# and peft, e.g. peft reading `is_gradient_checkpointing`): nothing they can act on.
_NOISY = r"(transformers|huggingface_hub|peft|accelerate|torch)(\.|$)"


@contextlib.contextmanager
def quiet_third_party(enabled: bool = True) -> Iterator[None]:
    """While loading a backbone, value model or reward: transformers and huggingface_hub log
    only errors, show no progress bars ("Loading weights", GGUF de-quantizing) and their
    warnings are dropped; every setting is restored afterwards. Errors still raise.

    Imports transformers, so callers enable it only around loads that need it (a `py:` spec
    should not pay seconds for it). Global state: meant for start-up, not concurrent loads.
    """
    if not enabled:
        yield
        return
    with warnings.catch_warnings(), contextlib.ExitStack() as undo:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=_NOISY)
        # transformers reads the hub's bar switch when first imported: import it before the
        # hub's bars are switched off, or its own would start (and stay) off.
        with contextlib.suppress(ImportError):
            import transformers.utils.logging  # noqa: F401
        _hush_hub(undo)
        _hush_transformers(undo)
        yield


def _hush_hub(undo: contextlib.ExitStack) -> None:
    try:
        from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                           enable_progress_bars)
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        return
    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    undo.callback(hub_logging.set_verbosity, level)
    # Runs after transformers' restore (which re-enables these too): the hub's state wins.
    if are_progress_bars_disabled():
        undo.callback(disable_progress_bars)
    else:
        disable_progress_bars()
        undo.callback(enable_progress_bars)


def _hush_transformers(undo: contextlib.ExitStack) -> None:
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:
        return
    level = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    undo.callback(tf_logging.set_verbosity, level)
    if tf_logging.is_progress_bar_enabled():
        # Also switches huggingface_hub's bars, whose own state _hush_hub restores after this.
        tf_logging.disable_progress_bar()
        undo.callback(tf_logging.enable_progress_bar)
    try:  # its GGUF de-quantizing bar is a bare tqdm that ignores the switch above
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
        undo.callback(setattr, gguf_utils, "tqdm", bar)
