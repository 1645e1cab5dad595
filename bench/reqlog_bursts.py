#!/usr/bin/env python3
"""The request-log writer's longest runs on the core, offline (no Sluice running): its commits, and
its retention deletes the way it did them before session 16 and the way it does them now.

    bench/reqlog_bursts.py [ROWS] [STEPS]

Creates the request log's schema (read from src/request_log/store.rs) with the writer's pragmas (WAL,
synchronous=NORMAL, no automatic checkpoint) and fills it with ROWS records shaped like the
benchmark's (default 200,000, in batches of 256). Then, STEPS times each (default 20):

Commits: a batch of 256 records as one transaction (what the writer does), and as two of 128 and four
of 64 (tried in session 16 to shorten the commit's run, not kept), each batch followed by its
checkpoint. Printed: the medians of the batch's longest commit, of all its commits together, of the
WAL frames they wrote and of the checkpoint's CPU.

Retention: steps deleting the oldest rows by `seq`, as the surplus rule does, each followed by a
checkpoint:

- one statement per step, in its own transaction (the retention before session 16, 10,000 rows);
- a transaction per step of 512 rows, in statements of 16 rows (what `store::apply_retention` does
  now: the writer yields the core between statements, so the longest run is one statement), and in
  statements of 4 rows for comparison.

Printed, per way, the medians over steps of the step's CPU, of its longest statement (what holds the
core without a yield: the writer yields between statements), of its commit and of the checkpoint
after it, and the CPU per deleted row.
Python's sqlite3 is not the SQLite build in the binary, so read the ratios, not the absolute numbers.
Standard library only.
"""
import os
import sqlite3
import sys
import tempfile
import time
import uuid

from reqlog_schema import INSERT, SCHEMA, SEQ_LOW_BITS, const

# The retention statement; as the row limit uses it here: the oldest rows, whatever their key.
DELETE = const("DELETE_OLDEST").replace("?1", "?").replace("?2", "?")
I64_MAX = 2**63 - 1
TIMELINE = '[[0,"received"],[97,"upstream_attempt"],[14689,"upstream_first_byte"],' \
           '[14689,"upstream_done"],[14714,"headers_sent"],[14749,"done"]]'


START_MS = 1_764_400_000_000


def insert(conn, n):
    rid = "%012x-7abc-%s" % (START_MS + n, uuid.uuid4().hex[:18])
    model = ("bench", "gpt-4o", "claude")[n % 3]
    received_at = START_MS + n // 2
    key = (received_at << SEQ_LOW_BITS) | (n & ((1 << SEQ_LOW_BITS) - 1))
    conn.execute(INSERT, (key, rid, 0, received_at, "0af7651916cd43dd8448eb211c80319c", None,
                          "/v1/chat/completions", "POST", model, "up", 200, 0, 0.41, None, 0.2, 12,
                          20, "0.000150", None, None, None, None, None, TIMELINE))


def fill(path, rows):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.executescript(SCHEMA)
    for first in range(0, rows, 256):
        conn.execute("BEGIN IMMEDIATE")
        for n in range(first, min(first + 256, rows)):
            insert(conn, n)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return conn


def batches(conn, per_commit, count):
    n = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    out = []
    for _ in range(count):
        commits = []
        for _ in range(256 // per_commit):
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(per_commit):
                n += 1
                insert(conn, n)
            cpu, _ = timed(lambda: conn.execute("COMMIT"))
            commits.append(cpu)
        checkpoint, row = timed(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        out.append((max(commits), sum(commits), row[1], checkpoint))
    med = lambda i: sorted(r[i] for r in out)[len(out) // 2]
    print(f"batch of 256 as {256 // per_commit} commit(s) of {per_commit:3}: longest commit "
          f"{med(0):6.0f} us, all commits {med(1):6.0f} us, {med(2):3} WAL frames, checkpoint {med(3):6.0f} us")


def timed(f):
    c0 = time.thread_time()
    result = f()
    return (time.thread_time() - c0) * 1e6, result


def steps(conn, rows_per_step, rows_per_statement, count):
    out = []
    for _ in range(count):
        cpu_begin, _ = timed(lambda: conn.execute("BEGIN IMMEDIATE"))
        statements = []
        done = 0
        while done < rows_per_step:
            limit = min(rows_per_statement, rows_per_step - done)
            cpu, cur = timed(lambda: conn.execute(DELETE, (I64_MAX, limit)))
            statements.append(cpu)
            done += cur.rowcount
            if cur.rowcount < limit:
                break
        commit, _ = timed(lambda: conn.execute("COMMIT"))
        checkpoint, _ = timed(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        out.append((cpu_begin + sum(statements) + commit, max(statements), commit, checkpoint, done))
    return out


def report(name, results):
    med = lambda i: sorted(r[i] for r in results)[len(results) // 2]
    rows = sum(r[4] for r in results) / len(results)
    print(f"{name:44} step CPU {med(0):9.0f} us, longest statement {med(1):8.0f} us, "
          f"commit {med(2):6.0f} us, checkpoint {med(3):6.0f} us, {med(0) / rows:5.1f} us per row")


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as directory:
        conn = fill(os.path.join(directory, "log.db"), rows)
        for per_commit in (256, 128, 64):
            batches(conn, per_commit, count)
        report("10,000 rows in one statement (before)", steps(conn, 10_000, 10_000, min(count, rows // 20_000)))
        report("512 rows in statements of 16 (now)", steps(conn, 512, 16, count))
        report("512 rows in statements of 4", steps(conn, 512, 4, count))
        conn.close()


if __name__ == "__main__":
    main()
