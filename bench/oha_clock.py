#!/usr/bin/env python3
"""How long after modes.sh's wall-clock stamp does oha's own clock start?

    bench/oha_clock.py [RUNS]        default 6; needs oha and taskset

modes.sh stamps each segment with `date +%s.%N` and then starts `taskset -c 1 oha`; oha records its
requests' times relative to an instant of its own, taken after its set-up. bench/pooled.py puts
those times on the wall clock as stamp + recorded time, so they are early by the set-up time, and
it allows for up to OHA_SLACK of it. This measures it the same way (the same two commands from
bash) against a loopback HTTP server in this process that notes when the first request arrived
and when its answer went out: oha's clock started at least (answer sent - stamp - first request's
recorded end) and at most (arrival - stamp - first request's recorded start) after the stamp.
Standard library only.
"""
import http.server
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    first = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            arrived = time.time()
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            answered = time.time()
            self.wfile.write(b"{}")
            first.setdefault("t", (arrived, answered))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with tempfile.TemporaryDirectory() as work:
        base, db = os.path.join(work, "base"), os.path.join(work, "seg.db")
        lows, highs = [], []
        for _ in range(runs):
            first.clear()
            if os.path.exists(db):
                os.remove(db)
            subprocess.run(
                ["bash", "-c", f'date +%s.%N >"{base}"; taskset -c 1 oha --no-tui -m POST -z 1s -c 5 -q 50 '
                 f'--latency-correction -d "{{}}" --db-url "{db}" "{url}" >/dev/null 2>&1'],
                check=True,
            )
            with open(base) as f:
                stamp = float(f.read())
            start, end = min(sqlite3.connect(db).execute("select start, end from oha"))
            arrived, answered = first["t"]
            lows.append((answered - stamp - end) * 1000)
            highs.append((arrived - stamp - start) * 1000)
            print(f"oha's clock started {lows[-1]:.1f} .. {highs[-1]:.1f} ms after the stamp")
    print(f"at most {max(highs):.1f} ms over {runs} runs")


if __name__ == "__main__":
    main()
