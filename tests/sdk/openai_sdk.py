"""Drives Sluice with the official OpenAI Python SDK, unchanged but for base_url. Prints one JSON object."""
import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-unused", max_retries=0)
out = {}

resp = client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hello"}])
out["chat_text"] = resp.choices[0].message.content
out["chat_usage"] = resp.usage.total_tokens

stream = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "hello"}],
    stream=True,
    stream_options={"include_usage": True},
)
parts, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage.total_tokens
out["stream_text"] = "".join(parts)
out["stream_usage"] = usage

comp = client.completions.create(model="mock-gpt", prompt="hello")
out["completion_text"] = comp.choices[0].text

emb = client.embeddings.create(model="mock-embed", input=["a", "b"])
out["embeddings"] = len(emb.data)

out["models"] = sorted(m.id for m in client.models.list())

try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    out["not_found"] = None
except openai.NotFoundError as e:
    out["not_found"] = e.status_code

try:
    broken = client.chat.completions.create(
        model="mock-broken", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    for _ in broken:
        pass
    out["mid_stream_error"] = None
except openai.APIError as e:
    out["mid_stream_error"] = type(e).__name__

print(json.dumps(out))
