#!/usr/bin/env python3
"""The demo's click stream and result viewer (pure-Python Kafka client:
kafka-python, `pip install kafka-python`).

  clicks.py produce --bootstrap B --topic clicks [--rate 40] [--seconds N]
      Clicks of 12 users in event time "now" (up to 1.5 s out of order),
      spread over every partition so that each partition's watermark moves.
      About 1 in 150 clicks is 20 s late (-> the late-events topic), 1 in 300
      is not JSON (-> the dead-letter topic), some are health checks (filtered).
  clicks.py show --bootstrap B --topic clicks-per-user [--min N] [--timeout S]
      [--need-field NAME] [--max-rows N] [--since-ms EPOCH_MS]
      Reads committed results (read_committed) from the beginning and prints
      one line per window result, with the second (since the command
      started) at which it became visible: results arrive in batches, one
      per committed checkpoint. Exits 0 once --min results (with field
      --need-field, when given) have been seen, 1 on timeout.
  clicks.py count --bootstrap B --topic T
      Number of committed records in T.
"""
import argparse
import json
import random
import signal
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

USERS = [f"user-{i:02d}" for i in range(1, 13)]
PAGES = [("/", 30), ("/search", 20), ("/product/42", 15), ("/product/7", 10), ("/cart", 10),
         ("/checkout", 8), ("/healthz", 7)]


def produce(a):
    p = KafkaProducer(bootstrap_servers=a.bootstrap, linger_ms=20, acks="all")
    parts = sorted(p.partitions_for(a.topic) or [])
    if not parts:
        sys.exit(f"topic {a.topic} has no partitions (does it exist?)")
    rnd = random.Random(a.seed)
    pages, weights = zip(*PAGES)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sent = late = bad = 0
    t0 = time.time()
    next_report = t0 + 10
    while not stop and (a.seconds is None or time.time() - t0 < a.seconds):
        tick = time.time()
        for _ in range(max(1, a.rate // 10)):
            i = rnd.randrange(len(USERS))
            user = USERS[i]
            part = parts[i % len(parts)]
            now_ms = int(time.time() * 1000)
            page = rnd.choices(pages, weights)[0]
            click = {"user_id": user, "page": page, "ts": now_ms - rnd.randrange(1500),
                     "amount": round(rnd.uniform(5, 120), 2) if page == "/checkout" else 0}
            if rnd.randrange(150) == 0:
                click["ts"] = now_ms - 20_000
                late += 1
            value = json.dumps(click).encode()
            if rnd.randrange(300) == 0:
                value = b"<html>not a click</html>"
                bad += 1
            p.send(a.topic, key=user.encode(), value=value, partition=part)
            sent += 1
        if time.time() >= next_report:
            print(f"producer: {sent} clicks sent ({late} late, {bad} malformed)", file=sys.stderr, flush=True)
            next_report += 10
        time.sleep(max(0.0, 0.1 - (time.time() - tick)))
    p.flush()
    p.close()
    print(f"producer: done, {sent} clicks sent ({late} late, {bad} malformed)", file=sys.stderr, flush=True)


def consumer(a):
    c = KafkaConsumer(bootstrap_servers=a.bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False, auto_offset_reset="earliest")
    parts = c.partitions_for_topic(a.topic)
    if not parts:
        sys.exit(f"topic {a.topic} not found")
    tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    return c


def hms(ms):
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000))


def show(a):
    c = consumer(a)
    seen = matched = printed = 0
    t0 = time.time()
    deadline = t0 + a.timeout
    header = False
    while time.time() < deadline:
        for _tp, msgs in c.poll(timeout_ms=500).items():
            for m in msgs:
                seen += 1
                try:
                    v = json.loads(m.value)
                except ValueError:
                    continue
                if a.need_field and a.need_field not in v:
                    continue
                if v.get("windowStart", 0) < a.since_ms:
                    continue
                matched += 1
                if printed < a.max_rows:
                    if not header:
                        print(f"  {'seen':>6}  {'window (UTC)':<19} {'user':<8} {'clicks':>6} {'spent':>8}  other")
                        header = True
                    extra = " ".join(f"{k}={v[k]}" for k in v
                                     if k not in ("key", "windowStart", "windowEnd", "clicks", "spent", "final", "firing"))
                    key = ",".join(str(k) for k in v.get("key", []))
                    spent = v.get("spent")
                    spent = f"{spent:8.2f}" if isinstance(spent, (int, float)) else f"{str(spent):>8}"
                    seen_at = f"+{time.time() - t0:.1f}s"
                    print(f"  {seen_at:>6}  {hms(v['windowStart'])}-{hms(v['windowEnd'])}  {key:<8} {v.get('clicks', '-'):>6} {spent}  {extra}",
                          flush=True)
                    printed += 1
        if matched >= a.min:
            print(f"  ({matched} matching results of {seen} committed so far)")
            return 0
    print(f"  timed out after {a.timeout}s: {matched} matching results of {seen} committed, wanted {a.min}")
    return 1


def count(a):
    c = consumer(a)
    n = 0
    deadline = time.time() + 30
    idle_since = time.time()
    while time.time() < deadline and time.time() - idle_since < 3:
        got = sum(len(v) for v in c.poll(timeout_ms=500).values())
        if got:
            n += got
            idle_since = time.time()
    print(n)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", default="clicks")
    p.add_argument("--rate", type=int, default=40, help="clicks per second")
    p.add_argument("--seconds", type=float)
    p.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("show")
    s.add_argument("--bootstrap", required=True)
    s.add_argument("--topic", default="clicks-per-user")
    s.add_argument("--min", type=int, default=1)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--need-field")
    s.add_argument("--max-rows", type=int, default=12)
    s.add_argument("--since-ms", type=int, default=0, help="skip windows starting before this (epoch ms)")
    n = sub.add_parser("count")
    n.add_argument("--bootstrap", required=True)
    n.add_argument("--topic", required=True)
    a = ap.parse_args()
    if a.cmd == "produce":
        produce(a)
    elif a.cmd == "show":
        sys.exit(show(a))
    else:
        count(a)


if __name__ == "__main__":
    main()
