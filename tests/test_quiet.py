"""`--quiet` (and `wrap`) print nothing of the libraries under us while models load: a real load
of the bundled value model through the CLI, and `progress.quiet_third_party` on its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from vas_proxy import progress

TESTS = Path(__file__).parent


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_VERBOSITY", "TQDM_"))}
    env["PYTHONPATH"] = f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env["PYTHONWARNINGS"] = "default"  # every warning shown once, as in a user's shell
    return env


def test_generate_quiet_with_the_bundled_value_model(upstream):
    """Loading bundled:positivity (a GGUF backbone + LoRA) makes transformers print its
    de-quantizing and "Loading weights" bars and peft a FutureWarning; --quiet shows none."""
    res = subprocess.run(
        [sys.executable, "-m", "vas_proxy", "generate", "Say hi.", "--upstream",
         upstream.base_url, "--model", upstream.model, "--chat-template", "chatml",
         "--value", "p=bundled:positivity", "--max-tokens", "2", "--seed", "3", "--quiet"],
        capture_output=True, text=True, timeout=300, env=_env())
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def _noise():
    """One of each kind of output the libraries make while loading."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as tf_logging

    tf_logging.get_logger("transformers.modeling_utils").warning("tf-log-noise")
    list(tf_logging.tqdm(range(3), desc="tf-bar-noise"))
    list(gguf_utils.tqdm(range(3), desc="gguf-bar-noise", file=sys.stderr))
    warnings.warn("future-noise", FutureWarning)


def _state():
    from huggingface_hub.utils import are_progress_bars_disabled
    from huggingface_hub.utils import logging as hub_logging
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as tf_logging

    return (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(),
            hub_logging.get_verbosity(), are_progress_bars_disabled(), gguf_utils.tqdm)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_third_party_hushes_and_restores(capfd):
    # transformers' own handler keeps the stderr it first saw (in a full run, some earlier
    # test's capture), so its log records are caught by a handler of ours, the bars by capfd.
    records = _Records()
    logging.getLogger("transformers").addHandler(records)
    before = _state()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with progress.quiet_third_party():
                _noise()
            assert not caught and not records.messages
            assert capfd.readouterr().err == ""
            assert _state() == before
            _noise()  # the same, after: everything is back
            assert [str(w.message) for w in caught] == ["future-noise"]
        err = capfd.readouterr().err
        assert all(n in err for n in ("tf-bar-noise", "gguf-bar-noise")), err
        assert records.messages == ["tf-log-noise"]
    finally:
        logging.getLogger("transformers").removeHandler(records)
    with progress.quiet_third_party(enabled=False):  # disabled: touches nothing
        assert _state() == before


def test_quiet_as_the_first_import_of_transformers_leaves_its_bars_on():
    """transformers reads the hub's bar switch when first imported; a quiet block that is the
    process's first contact with it must not leave its bars off (found by test order)."""
    code = ("from vas_proxy import progress\n"
            "with progress.quiet_third_party():\n    pass\n"
            "from transformers.utils import logging as t\n"
            "from huggingface_hub.utils import are_progress_bars_disabled as off\n"
            "assert t.is_progress_bar_enabled() and not off()\n")
    import subprocess
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
