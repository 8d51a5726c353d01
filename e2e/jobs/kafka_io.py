#!/usr/bin/env python3
"""Kafka I/O for the end-to-end job tests (e2e/tests/jobs.rs), with the
pure-Python kafka-python client (no librdkafka build in the e2e crate).

  kafka_io.py produce --bootstrap B --topic T < records.jsonl
      each line {"partition": P, "value": "<utf-8 text>"}; sent in order,
      acks=all, flushed before exit.
  kafka_io.py dump --bootstrap B --topic T
      everything committed in T (read_committed), one JSON line per record:
      {"partition", "offset", "key", "value", "headers": {name: value}};
      stops once every partition's position reaches the end it had at start.
"""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(a):
    p = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=5)
    n = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        p.send(a.topic, value=r["value"].encode(), partition=r["partition"])
        n += 1
    p.flush(timeout=60)
    p.close()
    print(n)


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def dump(a):
    c = KafkaConsumer(bootstrap_servers=a.bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False, auto_offset_reset="earliest")
    parts = c.partitions_for_topic(a.topic)
    if not parts:
        sys.exit(f"topic {a.topic} not found")
    tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    deadline = time.time() + a.timeout
    out = sys.stdout
    while any(c.position(tp) < end[tp] for tp in tps):
        if time.time() > deadline:
            sys.exit(f"timed out reading {a.topic}: positions "
                     f"{[c.position(tp) for tp in tps]}, ends {[end[tp] for tp in tps]}")
        for tp, msgs in c.poll(timeout_ms=500).items():
            for m in msgs:
                out.write(json.dumps({
                    "partition": m.partition, "offset": m.offset, "key": text(m.key),
                    "value": text(m.value), "headers": {k: text(v) for k, v in (m.headers or [])},
                }) + "\n")
    out.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["produce", "dump"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    produce(a) if a.cmd == "produce" else dump(a)


if __name__ == "__main__":
    main()
