"""What composing costs per push in a fan-out: once per device, or once per message (shared).

A message in a room of ``--room-size`` members goes to that many devices of different users
(different badges). Per platform, it composes the message for every member as the worker pool did
before the compose cache (:func:`bridge.compose.compose_message` per device), then through
:class:`bridge.worker.compose_cache.ComposeCache` (one composition, then a copy per device with
its badge), and prints the mean µs per push (fastest of ``--repeat`` runs: the machine is shared).

    .venv/bin/python -m bench.compose_fanout
    .venv/bin/python -m bench.compose_fanout --messages 400 --room-size 50 --repeat 3
"""

from __future__ import annotations

import argparse
import time

from bridge.compose import Target, compose_message
from bridge.upstream.protocol import Message
from bridge.worker.compose_cache import ComposeCache


def message(i: int, text: str) -> Message:
    return Message.model_validate(
        {
            "_id": f"m{i}",
            "room": "room-lunch",
            "messageType": "text",
            "message": text,
            "sender": {"_id": "bob", "nickname": "Bob"},
            "updatedAt": 1_700_000_000_000 + i,
        }
    )


def run(push_type: str, messages: list[Message], room_size: int, cached: bool) -> float:
    cache = ComposeCache()
    started = time.perf_counter()
    for m in messages:
        for member in range(room_size):
            target = Target(push_type=push_type, locale="en-US", badge=member % 40)
            if cached:
                cache.message(m, target, now=1_700_000_000.0, room_name="Lunch")
            else:
                compose_message(m, target, now=1_700_000_000.0, room_name="Lunch")
    return (time.perf_counter() - started) / (len(messages) * room_size) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--room-size", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    texts = {"short": "Lunch at noon?", "606 chars": "Lunch at noon? " * 40 + "ok", "6,000 chars": "長" * 6000}
    print(f"µs per push, {args.messages} messages × {args.room_size} recipients (fastest of {args.repeat})")
    print(f"{'message':<12} {'platform':<9} {'per device':>10} {'shared':>8} {'saved':>7}")
    for label, text in texts.items():
        msgs = [message(i, text) for i in range(args.messages)]
        for push_type in ("ios", "android"):
            alone = min(run(push_type, msgs, args.room_size, False) for _ in range(args.repeat))
            shared = min(run(push_type, msgs, args.room_size, True) for _ in range(args.repeat))
            print(f"{label:<12} {push_type:<9} {alone:>10.1f} {shared:>8.1f} {1 - shared / alone:>7.0%}")


if __name__ == "__main__":
    main()
