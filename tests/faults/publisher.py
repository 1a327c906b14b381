"""A publisher process: events in transactions of 1 to 5, about 10% rolled back.

``python -m tests.faults.publisher --count N --out FILE --seed S [--sleep-max 0.2]
[--rollback 0.1] [--rate R] [--type test.happened]``

Each event's outcome is appended to ``FILE`` after its transaction ended (outside it),
one ``<uuid> committed|rolled_back|unknown`` line each: the checker's ground truth. A
database error before COMMIT means rolled back; an error during COMMIT means unknown
(the event log decides). The process reconnects and carries on after errors.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time


class _Rollback(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep-max", type=float, default=0.0)
    parser.add_argument("--rollback", type=float, default=0.1)
    parser.add_argument("--rate", type=float, default=0.0, help="events per second, 0 = flat out")
    parser.add_argument("--type", default="test.happened")
    parser.add_argument("--deadline", type=float, default=900.0)
    args = parser.parse_args(argv)

    import django

    django.setup()
    from django.db import DatabaseError, InterfaceError, connection, transaction

    from django_events import publish

    rng = random.Random(args.seed)
    started = time.monotonic()
    errors = 0
    written = 0
    with open(args.out, "a", buffering=1) as out:
        while written < args.count:
            if time.monotonic() - started > args.deadline:
                print(f"publisher: deadline reached after {written} events", file=sys.stderr)
                return 3
            size = min(rng.randint(1, 5), args.count - written)
            roll_back = rng.random() < args.rollback
            ids: list[str] = []
            committing = False
            try:
                with transaction.atomic():
                    for _ in range(size):
                        event = publish(args.type, {"n": written + len(ids), "pid": os.getpid()})
                        ids.append(str(event.id))
                    if args.sleep_max:
                        time.sleep(rng.uniform(0, args.sleep_max))
                    if roll_back:
                        raise _Rollback
                    committing = True
                outcome = "committed"
            except _Rollback:
                outcome = "rolled_back"
            except (DatabaseError, InterfaceError) as exc:
                errors += 1
                outcome = "unknown" if committing else "rolled_back"
                print(f"publisher: {type(exc).__name__} ({outcome}): {exc}", file=sys.stderr)
                connection.close()
                time.sleep(min(2.0, 0.1 * errors))
                if errors > 2000:
                    return 4
            out.write("".join(f"{event_id} {outcome}\n" for event_id in ids))
            written += len(ids)
            if args.rate:
                behind = written / args.rate - (time.monotonic() - started)
                if behind > 0:
                    time.sleep(behind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
