"""Per-request strength and mixing of value models through the `vas` body field.

    vas-proxy serve --value pos=bundled:positivity --value brief=py:mymod:brevity --port 8000
    python examples/per_request_guidance.py
"""

import httpx2
import openai

client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
model = client.models.list().data[0].id
msgs = [{"role": "user", "content": "Tell me about your day."}]
for beta in (0.0, 1.0, 4.0):
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=40, seed=0,
                                       extra_body={"vas": {"beta": beta}})
    print(f"beta={beta}: {r.choices[0].message.content!r}")
# weights: which value models, and how much each (negative pushes away from a reward)
names = httpx2.get("http://127.0.0.1:8000/health").json()["values"]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=40, seed=0,
                                   extra_body={"vas": {"beta": 2.0,
                                                       "weights": {names[0]: -1.0},
                                                       "trace": True}})
print(r.choices[0].message.content)
print("first step:", r.choices[0].model_extra["vas_trace"][0]["candidates"][:3])
