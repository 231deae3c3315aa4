"""Talk to `vas-proxy serve` with the stock openai client.

In one terminal:   vas-proxy serve --port 8000          (embedded SmolLM2 + default value model)
In another:        python examples/serve_and_openai.py
"""

import openai

client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
model = client.models.list().data[0].id
r = client.chat.completions.create(model=model, max_tokens=48, seed=0,
                                   messages=[{"role": "user", "content": "Plan my weekend."}])
print(r.choices[0].message.content)
print(r.usage.model_extra["vas"])
