"""docs/mobile.md cannot drift: what its snippets read, send and list is what the bridge does.

Mechanical, with no list kept by hand: the payload keys the Swift/Kotlin snippets read
(``userInfo["pushId"]``, ``data["enc"]``, ``extras?.getString("type")``...), the keys of its JSON
examples and of its payload reference table are checked against pushes built by
:mod:`bridge.compose` and :func:`bridge.worker.fanout.notification_for` (text and photo messages,
an invitation, a summary, a test push and a badge update, for ``ios`` and ``fcm``, in every
privacy mode, with the ``encrypted`` ones opened by :func:`bridge.seal.open_sealed`); its
``im_loc_*`` keys against what compose can produce; its paths, request bodies and required fields
against the API's OpenAPI document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from bridge import compose, l10n
from bridge.api.app import create_app
from bridge.compose import KNOWN_TYPES, TEXT_TYPES, Target, loc_key_for
from bridge.config import Settings
from bridge.decide import SILENT_MESSAGE_TYPES
from bridge.models import PUSH_CONTENTS, ApnsRequest, Notification, PushContent, Registration
from bridge.push import fcm_layout
from bridge.seal import open_sealed
from bridge.upstream.protocol import Invitation, Message
from bridge.worker.fanout import notification_for

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "mobile.md"
KEY = bytes(range(32))
NOW = 1_700_000_000.0
MODES: tuple[PushContent, ...] = ("full", "hidden", "encrypted")
#: Keys compose adds for pushes that are not a message type.
EXTRA_LOC_KEYS = ("im_loc_invitation", "im_loc_summary", "im_loc_test")


# --------------------------------------------------------------------------------------------
# The guide


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, for messages


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def blocks(*langs: str) -> list[Block]:
    text = guide_text()
    found = [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    ]
    return [b for b in found if b.lang in langs]


def section(title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## ``."""
    text = guide_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def code_blocks() -> list[Block]:
    return blocks("swift", "kotlin")


# --------------------------------------------------------------------------------------------
# What compose produces


@dataclass
class Composed:
    """Every composed push, as the providers get it."""

    apns: list[dict[str, Any]] = field(default_factory=list)  # APNs payloads
    fcm: list[dict[str, Any]] = field(
        default_factory=list
    )  # {"data", "notification", "android", ...}
    opened: list[dict[str, str]] = field(default_factory=list)  # ``enc``, decrypted
    #: Key paths present in at least one push of a mode (badge updates have no mode).
    paths_by_mode: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)


def key_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """``("aps", "alert", "loc-key")``...: every key of nested objects (JSON strings are leaves)."""
    out: set[tuple[str, ...]] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add((*prefix, k))
            out |= key_paths(v, (*prefix, k))
    return out


def _events() -> dict[str, tuple[str, Message | Invitation | None]]:
    sender = {"_id": "u2", "nickname": "Bob"}
    return {
        "text": (
            "m1",
            Message.model_validate(
                {
                    "_id": "m1",
                    "room": "r1",
                    "messageType": "text",
                    "message": "Lunch?",
                    "sender": sender,
                }
            ),
        ),
        # Too long for 4 KB: payload trimmed (``payloadTrimmed``), text cut.
        "long": (
            "m3",
            Message.model_validate(
                {
                    "_id": "m3",
                    "room": "r1",
                    "messageType": "text",
                    "message": "x" * 5000,
                    "sender": sender,
                }
            ),
        ),
        "image": (
            "m2",
            Message.model_validate(
                {"_id": "m2", "room": "r1", "messageType": "image", "message": "", "sender": sender}
            ),
        ),
        "invitation": (
            "r9",
            Invitation.model_validate({"room": {"_id": "r9", "name": "Team"}, "inviter": sender}),
        ),
        "summary": ("r1", None),
        "test": ("t", None),
    }


@pytest.fixture(scope="module")
def composed() -> Composed:
    assert MODES == PUSH_CONTENTS  # every mode the bridge has
    out = Composed(paths_by_mode={m: set() for m in MODES})
    for push_type in ("ios", "fcm"):
        for mode in MODES:
            reg = Registration(
                type=push_type,
                token="tok",
                content=mode,
                content_key=KEY if mode == "encrypted" else None,
            )
            target = Target(
                push_type=reg.type,
                locale="en-US",
                badge=2,
                content=reg.content or "full",
                content_key=reg.content_key,
            )
            for kind, (ident, event) in _events().items():
                if isinstance(event, Message):
                    req = compose.compose_message(event, target, now=NOW, room_name="Team")
                elif isinstance(event, Invitation):
                    req = compose.compose_invitation(event, target, now=NOW)
                elif kind == "summary":
                    req = compose.compose_summary(ident, 3, target, now=NOW)
                else:
                    req = compose.compose_test(target, now=NOW)
                out.paths_by_mode[mode] |= _add(
                    out, notification_for("dev-1", reg, kind, ident, req, 0.0)
                )
        badge = compose.compose_badge(Target(push_type=push_type), 3, now=NOW)
        _add(
            out,
            notification_for(
                "dev-1", Registration(type=push_type, token="tok"), "badge", "3", badge, 0.0
            ),
        )
    assert out.opened, "no encrypted push was composed"
    return out


def _add(out: Composed, n: Notification) -> set[tuple[str, ...]]:
    """Record one push as its provider gets it; its key paths."""
    if isinstance(n.apns, ApnsRequest):
        message: dict[str, Any] = n.apns.payload
        out.apns.append(message)
        data = {k: v for k, v in message.items() if k != "aps"}
    else:
        req = n.fcm
        assert req is not None
        message = fcm_layout.blocks(req)
        out.fcm.append(message)
        data = req.data
    if "enc" in data:
        out.opened.append(json.loads(open_sealed(KEY, data["enc"])))
    return key_paths(message)


def namespaces(c: Composed) -> dict[str, set[str]]:
    """The keys a snippet variable may be read with, by the variable's name in the guide."""
    apns_top = {k for p in c.apns for k in p}
    fcm_data = {k for m in c.fcm for k in m["data"]}
    opened = {k for o in c.opened for k in o}
    data_block = (apns_top - {"aps"}) | fcm_data | opened
    ids: set[str] = set()
    for block in [
        *({k: v for k, v in p.items() if k != "aps"} for p in c.apns),
        *(m["data"] for m in c.fcm),
        *c.opened,
    ]:
        if "payload" in block:
            ids |= set(json.loads(block["payload"]))
    return {
        "userInfo": apns_top,  # Swift: the APNs payload
        "clear": apns_top - {"aps"},  # Swift: its custom keys, the data block as sent
        "aps": {k for p in c.apns for k in p["aps"]},
        "alert": {
            k for p in c.apns if isinstance(p["aps"].get("alert"), dict) for k in p["aps"]["alert"]
        },
        "data": fcm_data,  # Kotlin: RemoteMessage.data
        "extras": fcm_data,  # Kotlin: a tapped notification's intent extras
        "opened": opened,  # ``enc`` decrypted
        "block": data_block,  # the data block, as sent or as decrypted
        "ids": ids,  # the keys of ``payload``
    }


#: ``x["key"]`` / ``x?["key"]`` not followed by an assignment (``==`` is a read).
READ_SUBSCRIPT = re.compile(r'\b(\w+)\??\[\s*"([^"\n]+)"\s*\](?!\s*=(?!=))')
#: ``x.getString("key")``, ``x?.optString("key")``, ``x.get("key")``.
READ_CALL = re.compile(r'\b(\w+)\??\.(?:get|getString|optString)\(\s*"([^"\n]+)"\s*\)')


def reads() -> Iterator[tuple[Block, str, str]]:
    for b in code_blocks():
        for pattern in (READ_SUBSCRIPT, READ_CALL):
            for m in pattern.finditer(b.text):
                yield b, m.group(1), m.group(2)


# --------------------------------------------------------------------------------------------
# Payload keys


def test_snippet_reads_are_keys_compose_produces(composed: Composed) -> None:
    spaces = namespaces(composed)
    found = list(reads())
    wrong = [
        f"{b.lang} block at line {b.line}: {var}[{key!r}]"
        + ("" if var in spaces else f" (unknown variable {var!r}: map it in namespaces())")
        for b, var, key in found
        if key not in spaces.get(var, set())
    ]
    assert not wrong, "the guide reads keys no composed push has:\n" + "\n".join(wrong)
    # The extraction works, and the guide keeps the reads it is about: ack, tap, decrypt.
    seen = {(b.lang, var, key) for b, var, key in found}
    for needed in [
        ("swift", "clear", "pushId"),
        ("swift", "userInfo", "type"),
        ("swift", "clear", "enc"),
        ("kotlin", "data", "pushId"),
        ("kotlin", "extras", "type"),
        ("kotlin", "data", "enc"),
    ]:
        assert needed in seen, needed


def test_json_examples_have_only_composed_keys(composed: Composed) -> None:
    allowed = set().union(
        *(key_paths(p) for p in composed.apns), *(key_paths(m) for m in composed.fcm)
    )
    examples = blocks("json")
    assert len(examples) >= 2
    for b in examples:
        extra = key_paths(json.loads(b.text)) - allowed
        assert not extra, f"json block at line {b.line}: keys no composed push has: {sorted(extra)}"


def test_payload_reference_keys_and_modes(composed: Composed) -> None:
    """Each key of the table exists, in exactly the modes its row names ("all": every mode)."""
    rows = [line for line in section("Payload reference").splitlines() if line.startswith("| `")]
    assert len(rows) >= 10
    every = set().union(*composed.paths_by_mode.values())
    for row in rows:
        key_cell, modes_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        words = set(re.findall(r"\b(all|full|hidden|encrypted)\b", modes_cell))
        modes = set(MODES) if "all" in words else words
        for token in re.findall(r"`([^`]+)`", key_cell):
            path = tuple(token.split("."))

            def present(paths: set[tuple[str, ...]], path: tuple[str, ...] = path) -> bool:
                # A data key stands for the APNs custom key and the FCM data key alike.
                return path in paths or (len(path) == 1 and ("data", *path) in paths)

            assert present(every), f"{token}: no composed push has it"
            if not words:
                continue  # e.g. "when trimmed"
            for mode in MODES:
                assert present(composed.paths_by_mode[mode]) == (mode in modes), (
                    f"{token}: the table says modes {sorted(modes)}, compose disagrees for {mode}"
                )


# --------------------------------------------------------------------------------------------
# im_loc_* keys


def producible_loc_keys(c: Composed) -> set[str]:
    sent = {d["loc-key"] for d in [*(m["data"] for m in c.fcm), *c.opened] if "loc-key" in d}
    assert set(EXTRA_LOC_KEYS) <= sent  # compose really sends them
    return {loc_key_for(t) for t in KNOWN_TYPES} | sent


def strings_entries() -> dict[str, str]:
    (b,) = blocks("strings")
    entries = dict(re.findall(r'^"(im_loc_\w+)" = "(.*)";$', b.text, re.MULTILINE))
    assert len(entries) == len([line for line in b.text.splitlines() if line.strip()])
    return entries


def test_every_loc_key_in_the_guide_is_one_compose_produces(composed: Composed) -> None:
    mentioned = set(re.findall(r"\bim_loc_[A-Za-z0-9_]+", guide_text()))
    assert mentioned
    unknown = mentioned - producible_loc_keys(composed)
    assert not unknown, f"keys compose never sends: {sorted(unknown)}"


def test_the_strings_list_every_key_the_bridge_sends() -> None:
    """All known types, less those never pushed (recall, ai_streaming), plus the extra keys."""
    expected = {loc_key_for(t) for t in KNOWN_TYPES - SILENT_MESSAGE_TYPES} | set(EXTRA_LOC_KEYS)
    assert set(strings_entries()) == expected
    (xml,) = blocks("xml")
    android = dict(re.findall(r'<string name="(im_loc_\w+)">(.*)</string>', xml.text))
    assert android
    ios = strings_entries()
    for key, text in android.items():
        assert text == re.sub(r"%(\d)\$@", r"%\1$s", ios[key]), key


def test_the_strings_are_the_fallback_texts_with_compose_argument_order() -> None:
    """``%1$@``/``%2$@`` stand where compose's ``loc-args`` put the name and the text."""
    by_key = {loc_key_for(t): t for t in KNOWN_TYPES}

    def fmt(template: str, *names: str) -> str:
        for i, name in enumerate(names, 1):
            template = template.replace("{" + name + "}", f"%{i}$@")
        return template

    for key, text in strings_entries().items():
        assert key in by_key or key in EXTRA_LOC_KEYS, f"{key}: not a key compose sends"
        if key == "im_loc_invitation":
            want = fmt(l10n.text("en", "invitation"), "name", "room")
        elif key == "im_loc_summary":
            want = fmt(l10n.text("en", "summary"), "count")
        elif key == "im_loc_test":
            want = l10n.text("en", "test_body")
        elif by_key[key] in TEXT_TYPES:
            want = fmt(l10n.text("en", "with_sender"), "name", "text")
        else:
            mtype = by_key[key]
            want = fmt(
                l10n.text(
                    "en", f"type.{mtype}" if mtype in l10n.DESCRIBED_TYPES else "type._generic"
                ),
                "name",
            )
        assert text == want, key


# --------------------------------------------------------------------------------------------
# API paths and bodies


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("guide") / "bridge.db"
    settings = Settings(
        _env_file=None,
        imkit_url="http://127.0.0.1:9",
        store=f"sqlite:///{db}",
        secret_key=Fernet.generate_key().decode(),
    )
    return create_app(settings).openapi()


def norm(path: str) -> str:
    """``/me/devices/\\(id)/ack``, ``${id}``, ``$ID``, ``{deviceId}`` → ``/me/devices/{}/ack``."""
    path = re.sub(r"\\\([^)]*\)", "{}", path)
    path = re.sub(r"\$\{[^}]*\}", "{}", path)
    path = re.sub(r"\$\w+", "{}", path)
    return re.sub(r"\{[^}]*\}", "{}", path)


@dataclass(frozen=True)
class Operation:
    fields: frozenset[str] | None  # request body properties; None: no body
    required: frozenset[str]


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], Operation]:
    out = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody")
            if body is None:
                out[(method.upper(), norm(path))] = Operation(None, frozenset())
                continue
            ref = body["content"]["application/json"]["schema"]["$ref"]
            schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
            out[(method.upper(), norm(path))] = Operation(
                frozenset(schema["properties"]), frozenset(schema.get("required", ()))
            )
    return out


def _balanced(text: str, start: int) -> str:
    """The inside of the bracket opened at ``text[start]`` (string literals skipped)."""
    depth, i, in_string = 0, start, False
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    raise AssertionError(f"unbalanced literal: {text[start : start + 80]!r}")


LITERAL = re.compile(r"\[|(?:mutableMapOf|mapOf)(?:<[^>]*>)?\(")
LITERAL_KEY = re.compile(r'"([A-Za-z_][\w-]*)"\s*(?::(?!:)|to\b)')


def _literal_keys(text: str, at: int) -> set[str] | None:
    m = LITERAL.match(text, at)
    if m is None:
        return None
    return set(LITERAL_KEY.findall(_balanced(text, m.end() - 1)))


def body_keys(block: str, at: int) -> set[str] | None:
    """The keys of the body argument starting at ``at``: a literal, or a variable made from one
    in the same block (plus ``name["key"] = ...`` writes); None when there is no body."""
    keys = _literal_keys(block, at)
    if keys is not None:
        return keys
    name = re.match(r"\w+", block[at:])
    if name is None:
        return None
    decl = re.search(rf"\b(?:var|val|let)\s+{name.group()}\b[^=\n]*=\s*", block)
    assert decl is not None, f"body variable {name.group()!r} is not built in its block"
    keys = _literal_keys(block, decl.end())
    assert keys is not None, f"body variable {name.group()!r} is not a literal"
    return keys | set(re.findall(rf'\b{name.group()}\["(\w+)"\]\s*=(?!=)', block))


CALL = re.compile(r'\b(post|get)\(\s*"([^"\n]+)"\s*(,\s*)?')


def snippet_calls() -> Iterator[tuple[Block, str, str, set[str] | None]]:
    for b in code_blocks():
        for m in CALL.finditer(b.text):
            yield (
                b,
                m.group(1).upper(),
                norm(m.group(2)),
                body_keys(b.text, m.end()) if m.group(3) else None,
            )


def _check(
    ops: dict[tuple[str, str], Operation], where: str, method: str, path: str, keys: set[str] | None
) -> None:
    op = ops.get((method, path))
    assert op is not None, f"{where}: {method} {path} is not an API operation"
    if keys is None:
        assert op.fields is None or not op.required, f"{where}: {method} {path} needs a body"
        return
    assert op.fields is not None, f"{where}: {method} {path} takes no body"
    assert keys <= op.fields, (
        f"{where}: {method} {path}: unknown body fields {sorted(keys - op.fields)}"
    )
    assert op.required <= keys, (
        f"{where}: {method} {path}: missing required {sorted(op.required - keys)}"
    )


def test_snippet_calls_match_the_api(openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    calls = list(snippet_calls())
    for b, method, path, keys in calls:
        _check(ops, f"{b.lang} block at line {b.line}", method, path, keys)
    made = {(b.lang, path) for b, _m, path, _k in calls}
    for lang in ("swift", "kotlin"):
        for path in ("/me/subscribe", "/me/state", "/me/unsubscribe", "/me/devices/{}/ack"):
            assert (lang, path) in made, (lang, path)
    subscribes = [k for _b, _m, path, k in calls if path == "/me/subscribe"]
    assert all(k is not None and {"apnsEnvironment", "locale"} & k for k in subscribes)


def test_the_call_table_matches_the_api(openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    rows = re.findall(
        r"^\|[^|\n]*\|\s*`(GET|POST) (/me[^`]*)`\s*\|\s*([^|\n]*?)\s*\|$",
        section("What to call, when"),
        re.MULTILINE,
    )
    assert len(rows) >= 6
    for method, path, body in rows:
        keys = None
        if body.startswith("`{"):
            inside = re.sub(r'"[^"]*"', "", body.strip("`{}"))
            keys = set(re.findall(r"([A-Za-z_]\w*)\??\s*(?::|,|$)", inside))
        _check(ops, "call table", method, norm(path), keys)


def test_every_path_in_the_guide_is_an_api_path(openapi: dict[str, Any]) -> None:
    paths = {norm(p) for p in openapi["paths"]}
    mentioned = {
        norm(m.group()).rstrip(").:") for m in re.finditer(r"/me(?!\w)[^\s`\"|,;]*", guide_text())
    }
    assert len(mentioned) >= 5
    assert not mentioned - paths
