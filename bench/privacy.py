"""What a privacy mode costs per push: compose time for ``full``, ``hidden`` and ``encrypted``.

Composes the same chat message ``--iterations`` times per mode and platform (after a warm-up of
1,000), with :func:`bridge.compose.compose_message` as the worker pool calls it, and prints the
mean µs per push. Three messages: a short text (the common case), a 606-character one (fits
whole in every mode: one seal for ``encrypted``), and a 6,000-character one (trimmed to fit: each
fitting attempt of ``encrypted`` seals, and base64 costs a third of the budget). The fastest of
``--repeat`` runs is shown (the machine is shared: the minimum is the least noisy).

    .venv/bin/python -m bench.privacy
    .venv/bin/python -m bench.privacy --iterations 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import time

from bridge.compose import Target, compose_message
from bridge.models import PushContent
from bridge.upstream.protocol import Message

KEY = bytes(range(32))
MODES: tuple[PushContent, ...] = ("full", "hidden", "encrypted")


def message(text: str) -> Message:
    return Message.model_validate(
        {
            "_id": "6650f2c1e4b0a1b2c3d4e5f6",
            "room": "room-lunch",
            "messageType": "text",
            "message": text,
            "sender": {"_id": "bob", "nickname": "Bob", "avatarUrl": "https://example.com/bob.png"},
            "messageTimeMS": 1_760_000_000_000,
            "createdAtMS": 1_760_000_000_000,
            "updatedAtMS": 1_760_000_000_000,
            "mentions": [],
            "extra": {"client": "ios"},
        }
    )


def per_push_us(msg: Message, target: Target, iterations: int, repeat: int) -> float:
    for _ in range(1000):
        compose_message(msg, target, now=1_760_000_000.0, room_name="Lunch")
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(iterations):
            compose_message(msg, target, now=1_760_000_000.0, room_name="Lunch")
        best = min(best, (time.perf_counter() - start) / iterations)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    texts = {
        "short text": "Lunch at noon? 🍜",
        "606 chars": "Lunch at noon " * 42 + "at the usual place",
        "6,000 chars": "訊息 and text " * 500,
    }
    print(f"compose_message, µs per push (best of {args.repeat} × {args.iterations:,})")
    print(f"{'message':<12} {'platform':<8} " + " ".join(f"{m:>10}" for m in MODES) + "  encrypted/full")
    for label, text in texts.items():
        msg = message(text)
        for push_type in ("ios", "android"):
            us = {
                mode: per_push_us(
                    msg,
                    Target(push_type, "en", badge=3, content=mode, content_key=KEY),
                    args.iterations,
                    args.repeat,
                )
                for mode in MODES
            }
            cells = " ".join(f"{us[m]:>10.1f}" for m in MODES)
            print(f"{label:<12} {push_type:<8} {cells}  {us['encrypted'] / us['full']:>13.2f}×")


if __name__ == "__main__":
    main()
