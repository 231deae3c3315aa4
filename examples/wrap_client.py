"""Guide any OpenAI-compatible upstream from Python with `vas_proxy.wrap`.

Starts the embedded SmolLM2 upstream so it runs anywhere; point `base_url` at your own server
(vLLM, llama.cpp, SGLang, ...) instead.  python examples/wrap_client.py
"""

import openai

import vas_proxy
from vas_proxy.assets import smollm2_gguf
from vas_proxy.upstream.local import LocalUpstream

with LocalUpstream() as up:
    client = openai.OpenAI(base_url=up.base_url, api_key="none")
    guided = vas_proxy.wrap(client, beta=2.0, chat_template=str(smollm2_gguf()))
    r = guided.chat.completions.create(
        model=up.model, messages=[{"role": "user", "content": "How was your Monday?"}],
        max_tokens=48, seed=0)
    print(r.choices[0].message.content)
    print("upstream cost:", r.usage.model_extra["vas"])
    # streaming works too
    for chunk in guided.chat.completions.create(
            model=up.model, messages=[{"role": "user", "content": "Describe rain."}],
            max_tokens=32, seed=1, stream=True):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
