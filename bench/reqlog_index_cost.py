#!/usr/bin/env python3
"""Offline: what the request log's `status` index costs per record, in instructions (callgrind).

    bench/reqlog_index_cost.py [BATCHES]        default 50 batches of 200 records

Inserts BATCHES batches (one transaction each, as the writer does) into a fresh database with the
schema read from src/request_log/store.rs, three times, each under `valgrind --tool=callgrind`: as it
is (`full`), with `requests_status` replaced by a partial index of the error rows only
(`WHERE status >= 400`), and with no status index at all. Every 50th record is a 500, the others 200.
The interpreter's own work is the same in the three runs, so the differences per record are SQLite's.
Needs valgrind. How session 22 sized a partial status index (docs/BENCHMARKS.md).
"""
import os
import subprocess
import sys
import tempfile

from reqlog_schema import INSERT, SCHEMA, SEQ_LOW_BITS

FULL_INDEX = "CREATE INDEX IF NOT EXISTS requests_status ON requests (status);"
VARIANTS = {
    "full": SCHEMA,
    "partial": SCHEMA.replace(
        FULL_INDEX, "CREATE INDEX IF NOT EXISTS requests_errors ON requests (status) WHERE status >= 400;"
    ),
    "none": SCHEMA.replace(FULL_INDEX, ""),
}
BATCH = 200
TIMELINE = '[[0,"received"],[96635,"upstream_attempt"],[14689016,"upstream_first_byte"],' \
    '[14689016,"upstream_done"],[14713713,"headers_sent"],[14748706,"done"]]'


def insert(variant, batches):
    """The measured work: run inside callgrind by `main`."""
    import sqlite3

    with tempfile.TemporaryDirectory() as directory:
        conn = sqlite3.connect(os.path.join(directory, "requests.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(VARIANTS[variant])
        start_ms = 1_764_400_000_000
        for b in range(batches):
            conn.execute("BEGIN IMMEDIATE")
            for i in range(BATCH):
                n = b * BATCH + i
                received_at = start_ms + n // 2
                key = (received_at << SEQ_LOW_BITS) | (n & ((1 << SEQ_LOW_BITS) - 1))
                conn.execute(INSERT, (
                    key, "%012x-7abc-8def-%012x" % (start_ms + n, n), 0, received_at,
                    "0af7651916cd43dd8448eb211c80319c", None, "/v1/chat/completions", "POST", "bench",
                    "up", 500 if n % 50 == 0 else 200, 0, 0.41, None, 0.2, 12, 20, "0.000150", None,
                    None, None, None, None, TIMELINE,
                ))
            conn.execute("COMMIT")
        conn.close()


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--insert":
        insert(sys.argv[2], int(sys.argv[3]))
        return
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    counts = {}
    with tempfile.TemporaryDirectory() as out:
        for variant in VARIANTS:
            result = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/{variant}",
                 sys.executable, os.path.abspath(__file__), "--insert", variant, str(batches)],
                capture_output=True, text=True, check=True,
            )
            counts[variant] = int(result.stderr.split("Collected : ")[1].split()[0])
    records = batches * BATCH
    for variant, n in counts.items():
        print(f"{variant:8} {n:>14,} instructions; {(n - counts['full']) / records:+,.0f} per record against full")


if __name__ == "__main__":
    main()
