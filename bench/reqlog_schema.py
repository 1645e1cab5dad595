"""The request log's schema and insert statement, read from src/request_log/store.rs, for the offline
request-log scripts (checkpoint_cost.py, reqlog_bursts.py). Standard library only."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = open(os.path.join(REPO, "src/request_log/store.rs"), encoding="utf-8").read()


def const(name):
    """A string constant of store.rs, with Rust's line continuation ("\\" + newline + indent) undone."""
    text = SRC.split(f'const {name}: &str = "')[1].split('";')[0]
    return " ".join(" ".join(text.split("\\\n")).split())


# The current schema: the table, its indexes and the row count.
SCHEMA = const("TABLE").replace("{table}", "requests") + const("INDEXES") + const("COUNT_TABLE")
INSERT = const("INSERT")
# Keys: the arrival millisecond above this many bits (store.rs, `SeqSource`).
SEQ_LOW_BITS = int(SRC.split("const SEQ_LOW_BITS: u32 = ")[1].split(";")[0])
