"""A multi-turn session through the official OpenAI Python SDK: the session is named with an extra
header, the SDK is otherwise unchanged. Prints one JSON object."""
import json
import sys
import urllib.request

import openai


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


base_url = sys.argv[1]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-unused", max_retries=0)
session = call("POST", f"{base_url}/v1/sessions", {"model": "mock-gpt", "system": "Be brief."})
headers = {"x-sluice-session-id": session["id"]}
out = {"session": session["id"]}

resp = client.chat.completions.create(
    model="mock-gpt", messages=[{"role": "user", "content": "My name is Ada."}], extra_headers=headers
)
out["first"] = resp.choices[0].message.content

stream = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "What is my name?"}],
    stream=True,
    extra_headers=headers,
)
out["second"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

stored = call("GET", f"{base_url}/v1/sessions/{session['id']}")
out["turns"] = [
    {"input": t["input"][0]["content"], "output": t["output"]["content"], "cut": t["cut"]}
    for t in stored["turns"]
]
print(json.dumps(out))
