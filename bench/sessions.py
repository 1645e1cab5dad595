"""Session-turn latency: one client, keep-alive, alternating a turn on a session that already holds
HISTORY turns with the same call outside any session, so both see the same machine noise.

    sessions.py URL KEY SESSIONS HISTORY OUT.json

Prints and writes p50/p90/p99 of both and of the difference of the medians/percentiles."""
import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlparse

url, key, sessions, history, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
u = urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}


def call(method, path, body=None, extra=None):
    h = dict(headers, **(extra or {}))
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise SystemExit(f"{method} {path}: {resp.status} {data[:300]!r}")
    return json.loads(data)


def turn(i, n):
    return {"model": "bench", "messages": [{"role": "user", "content": f"Question {n} of session {i}: what about item {n * 7}?"}]}


ids = []
for i in range(sessions):
    ids.append(call("POST", "/v1/sessions", {"model": "bench", "system": "You are a helpful assistant."})["id"])
    for n in range(history):
        call("POST", "/v1/chat/completions", turn(i, n), {"x-sluice-session-id": ids[-1]})

plain, session = [], []
for i, sid in enumerate(ids):
    t0 = time.perf_counter()
    call("POST", "/v1/chat/completions", turn(i, history))
    t1 = time.perf_counter()
    call("POST", "/v1/chat/completions", turn(i, history), {"x-sluice-session-id": sid})
    t2 = time.perf_counter()
    plain.append((t1 - t0) * 1000)
    session.append((t2 - t1) * 1000)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


stored = call("GET", f"/v1/sessions/{ids[0]}")
result = {
    "samples": len(ids),
    "history_turns": history,
    "sent_turns_last": len(stored["turns"]) - 1 - stored["turns"][-1]["sent"]["dropped_turns"],
    "plain": {p: pct(plain, p) for p in (50, 90, 99)},
    "session": {p: pct(session, p) for p in (50, 90, 99)},
}
result["added"] = {p: result["session"][p] - result["plain"][p] for p in (50, 90, 99)}
print(json.dumps(result))
open(out, "w").write(json.dumps(result) + "\n")
