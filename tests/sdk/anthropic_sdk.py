"""Drives Sluice with the official Anthropic Python SDK, unchanged but for base_url. Prints one JSON object."""
import json
import sys

import anthropic

base_url = sys.argv[1]
client = anthropic.Anthropic(base_url=base_url, api_key="sk-unused", max_retries=0)
out = {}

msg = client.messages.create(
    model="mock-claude", max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hello"}]
)
out["text"] = msg.content[0].text
out["stop_reason"] = msg.stop_reason
out["usage"] = [msg.usage.input_tokens, msg.usage.output_tokens]

with client.messages.stream(
    model="mock-claude", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
out["stream_text"] = streamed
out["stream_stop_reason"] = final.stop_reason
out["stream_output_tokens"] = final.usage.output_tokens

try:
    client.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    out["not_found"] = None
except anthropic.NotFoundError as e:
    out["not_found"] = e.status_code

print(json.dumps(out))
