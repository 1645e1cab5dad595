#!/usr/bin/env python3
"""CPU and wall time of one WAL checkpoint of the request log, offline (no Sluice running).

    bench/checkpoint_cost.py [ROUNDS]

Creates the request log's schema (read from src/request_log/store.rs) in a temporary directory with
the writer's pragmas (WAL, no automatic checkpoint), inserts batches of 200 records shaped like the
benchmark's, and times `PRAGMA wal_checkpoint(PASSIVE)` after every batch and after every ten, with
`synchronous=NORMAL` (what Sluice uses) and `OFF` (for comparison only), and once more with
timelines in schema 1's object form (what the compact form saves). Prints the median per
checkpoint and per record. Python's sqlite3 is not the SQLite build in the binary, so read the
ratios, not the absolute numbers. Standard library only.
"""
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid

from reqlog_schema import INSERT, SCHEMA, SEQ_LOW_BITS

# A benchmark request's six steps, as stored (src/request_log/timeline.rs) and, for comparison, in
# schema 1's object form.
STEPS = [(0.0, "received"), (0.096635, "upstream_attempt"), (14.689016, "upstream_first_byte"),
         (14.689016, "upstream_done"), (14.713713, "headers_sent"), (14.748706, "done")]
TIMELINES = {
    "compact": json.dumps([[round(ms * 1000), name] for ms, name in STEPS], separators=(",", ":")),
    "schema-1 objects": json.dumps([{"at_ms": ms, "name": name, "detail": None} for ms, name in STEPS],
                                   separators=(",", ":")),
}


def run(directory, sync, batches_per_checkpoint, rounds, form="compact", batch=200):
    path = os.path.join(directory, f"{sync}-{batches_per_checkpoint}-{form[:7]}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.executescript(SCHEMA)
    start_ms, n = 1_764_400_000_000, 0
    cpu, wall, frames = [], [], []
    for _ in range(rounds):
        for _ in range(batches_per_checkpoint):
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(batch):
                n += 1
                # Time-ordered ids, as Sluice's UUIDv7 request ids are.
                rid = "%012x-7abc-%s" % (start_ms + n, uuid.uuid4().hex[:18])
                received_at = start_ms + n // 2
                key = (received_at << SEQ_LOW_BITS) | (n & ((1 << SEQ_LOW_BITS) - 1))
                conn.execute(INSERT, (key, rid, 0, received_at, "0af7651916cd43dd8448eb211c80319c",
                                      None, "/v1/chat/completions", "POST", "bench", "up", 200, 0,
                                      0.41, None, 0.2, 12, 20, "0.000150", None, None, None, None,
                                      None, TIMELINES[form]))
            conn.execute("COMMIT")
        c0, w0 = time.thread_time(), time.perf_counter()
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        cpu.append((time.thread_time() - c0) * 1e6)
        wall.append((time.perf_counter() - w0) * 1e6)
        frames.append(row[1])
    conn.close()
    med = lambda xs: sorted(xs)[len(xs) // 2]
    records = batch * batches_per_checkpoint
    print(f"{form:16} synchronous={sync:6} checkpoint every {batches_per_checkpoint:2} batches: "
          f"{med(frames)} WAL frames, CPU {med(cpu):.0f} us ({med(cpu) / records:.2f} per record), "
          f"wall {med(wall):.0f} us")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as directory:
        for sync in ("NORMAL", "OFF"):
            for every in (1, 10):
                run(directory, sync, every, rounds)
        run(directory, "NORMAL", 1, rounds, form="schema-1 objects")


if __name__ == "__main__":
    main()
