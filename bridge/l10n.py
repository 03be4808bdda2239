"""Fallback notification text in the five languages the bridge speaks (used by compose).

Apps that ship ``im_loc_*`` strings render their own text from ``loc-key``/``loc-args``; these
tables give everybody else a sensible plain ``title``/``body``. A language is one of ``en``,
``zh-Hant``, ``zh-Hans``, ``ja`` and ``ko``; :func:`resolve_locale` maps a device locale onto one.
Templates use ``str.format`` fields (``{name}``, ``{text}``, ``{room}``, ``{count}``); values are
substituted, never re-interpreted, so a nickname containing braces is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

LANGS: tuple[str, ...] = ("en", "zh-Hant", "zh-Hans", "ja", "ko")

_HANT_REGIONS = frozenset({"tw", "hk", "mo"})

# Keys "type.<messageType>" describe a message of that type; "type._generic" covers the rest.
_EN: dict[str, str] = {
    "system": "System",
    "someone": "Someone",
    "a_chat": "a chat",
    "with_sender": "{name}: {text}",
    "new_message_title": "New message",
    "new_message_body": "You have a new message",
    "new_invitation_title": "New invitation",
    "new_invitation_body": "You have a new invitation",
    "invitation": "{name} invited you to {room}",
    "summary_title": "New messages",
    "summary_one": "{count} new message",
    "summary": "{count} new messages",
    "test_title": "Test notification",
    "test_body": "Push notifications are working.",
    "type._generic": "{name} sent a message",
    "type.image": "{name} sent a photo",
    "type.video": "{name} sent a video",
    "type.audio": "{name} sent a voice message",
    "type.file": "{name} sent a file",
    "type.location": "{name} shared a location",
    "type.sticker": "{name} sent a sticker",
    "type.url": "{name} shared a link",
    "type.announcement": "{name} posted an announcement",
    "type.recall": "{name} recalled a message",
    "type.encrypted": "{name} sent an encrypted message",
    "type.joinRoom": "{name} joined the chat",
    "type.leaveRoom": "{name} left the chat",
    "type.addMember": "{name} added a member",
    "type.addMembers": "{name} added members",
    "type.deleteMember": "{name} removed a member",
    "type.deleteMembers": "{name} removed members",
    "type.cancelInvitations": "{name} canceled invitations",
    "type.payment": "{name} sent a payment",
    "type.payment-select": "{name} sent a payment request",
    "type.waitingCall": "{name} is calling you",
    "type.missingCall": "Missed call from {name}",
    "type.endCall": "{name} ended the call",
}

_ZH_HANT: dict[str, str] = {
    "system": "系統",
    "someone": "有人",
    "a_chat": "聊天室",
    "with_sender": "{name}：{text}",
    "new_message_title": "新訊息",
    "new_message_body": "你有一則新訊息",
    "new_invitation_title": "新邀請",
    "new_invitation_body": "你有一則新邀請",
    "invitation": "{name} 邀請你加入 {room}",
    "summary_title": "新訊息",
    "summary": "{count} 則新訊息",
    "test_title": "測試通知",
    "test_body": "推播通知運作正常。",
    "type._generic": "{name} 傳送了一則訊息",
    "type.image": "{name} 傳送了一張照片",
    "type.video": "{name} 傳送了一段影片",
    "type.audio": "{name} 傳送了一則語音訊息",
    "type.file": "{name} 傳送了一個檔案",
    "type.location": "{name} 分享了位置",
    "type.sticker": "{name} 傳送了一張貼圖",
    "type.url": "{name} 分享了一個連結",
    "type.announcement": "{name} 發布了一則公告",
    "type.recall": "{name} 收回了一則訊息",
    "type.encrypted": "{name} 傳送了一則加密訊息",
    "type.joinRoom": "{name} 加入了聊天室",
    "type.leaveRoom": "{name} 離開了聊天室",
    "type.addMember": "{name} 新增了一位成員",
    "type.addMembers": "{name} 新增了成員",
    "type.deleteMember": "{name} 移除了一位成員",
    "type.deleteMembers": "{name} 移除了成員",
    "type.cancelInvitations": "{name} 取消了邀請",
    "type.payment": "{name} 傳送了一筆付款",
    "type.payment-select": "{name} 傳送了付款請求",
    "type.waitingCall": "{name} 來電中",
    "type.missingCall": "{name} 的未接來電",
    "type.endCall": "{name} 結束了通話",
}

_ZH_HANS: dict[str, str] = {
    "system": "系统",
    "someone": "有人",
    "a_chat": "聊天",
    "with_sender": "{name}：{text}",
    "new_message_title": "新消息",
    "new_message_body": "你有一条新消息",
    "new_invitation_title": "新邀请",
    "new_invitation_body": "你有一条新邀请",
    "invitation": "{name} 邀请你加入 {room}",
    "summary_title": "新消息",
    "summary": "{count} 条新消息",
    "test_title": "测试通知",
    "test_body": "推送通知工作正常。",
    "type._generic": "{name} 发送了一条消息",
    "type.image": "{name} 发送了一张图片",
    "type.video": "{name} 发送了一段视频",
    "type.audio": "{name} 发送了一条语音消息",
    "type.file": "{name} 发送了一个文件",
    "type.location": "{name} 分享了位置",
    "type.sticker": "{name} 发送了一个贴纸",
    "type.url": "{name} 分享了一个链接",
    "type.announcement": "{name} 发布了一条公告",
    "type.recall": "{name} 撤回了一条消息",
    "type.encrypted": "{name} 发送了一条加密消息",
    "type.joinRoom": "{name} 加入了群聊",
    "type.leaveRoom": "{name} 退出了群聊",
    "type.addMember": "{name} 添加了一位成员",
    "type.addMembers": "{name} 添加了成员",
    "type.deleteMember": "{name} 移除了一位成员",
    "type.deleteMembers": "{name} 移除了成员",
    "type.cancelInvitations": "{name} 取消了邀请",
    "type.payment": "{name} 发送了一笔付款",
    "type.payment-select": "{name} 发送了付款请求",
    "type.waitingCall": "{name} 正在呼叫你",
    "type.missingCall": "来自 {name} 的未接来电",
    "type.endCall": "{name} 结束了通话",
}

_JA: dict[str, str] = {
    "system": "システム",
    "someone": "誰か",
    "a_chat": "チャット",
    "with_sender": "{name}: {text}",
    "new_message_title": "新着メッセージ",
    "new_message_body": "新しいメッセージがあります",
    "new_invitation_title": "新しい招待",
    "new_invitation_body": "新しい招待があります",
    "invitation": "{name}があなたを{room}に招待しました",
    "summary_title": "新着メッセージ",
    "summary": "{count}件の新着メッセージ",
    "test_title": "テスト通知",
    "test_body": "プッシュ通知は正常に動作しています。",
    "type._generic": "{name}がメッセージを送信しました",
    "type.image": "{name}が写真を送信しました",
    "type.video": "{name}が動画を送信しました",
    "type.audio": "{name}がボイスメッセージを送信しました",
    "type.file": "{name}がファイルを送信しました",
    "type.location": "{name}が位置情報を送信しました",
    "type.sticker": "{name}がスタンプを送信しました",
    "type.url": "{name}がリンクを送信しました",
    "type.announcement": "{name}がアナウンスを投稿しました",
    "type.recall": "{name}がメッセージの送信を取り消しました",
    "type.encrypted": "{name}が暗号化されたメッセージを送信しました",
    "type.joinRoom": "{name}がチャットに参加しました",
    "type.leaveRoom": "{name}がチャットを退出しました",
    "type.addMember": "{name}がメンバーを追加しました",
    "type.addMembers": "{name}がメンバーを追加しました",
    "type.deleteMember": "{name}がメンバーを削除しました",
    "type.deleteMembers": "{name}がメンバーを削除しました",
    "type.cancelInvitations": "{name}が招待を取り消しました",
    "type.payment": "{name}が送金しました",
    "type.payment-select": "{name}が支払いをリクエストしました",
    "type.waitingCall": "{name}から着信中",
    "type.missingCall": "{name}からの不在着信",
    "type.endCall": "{name}が通話を終了しました",
}

_KO: dict[str, str] = {
    "system": "시스템",
    "someone": "누군가",
    "a_chat": "채팅방",
    "with_sender": "{name}: {text}",
    "new_message_title": "새 메시지",
    "new_message_body": "새 메시지가 있습니다",
    "new_invitation_title": "새 초대",
    "new_invitation_body": "새 초대가 있습니다",
    "invitation": "{name}님이 {room}에 초대했습니다",
    "summary_title": "새 메시지",
    "summary": "새 메시지 {count}개",
    "test_title": "테스트 알림",
    "test_body": "푸시 알림이 정상적으로 작동합니다.",
    "type._generic": "{name}님이 메시지를 보냈습니다",
    "type.image": "{name}님이 사진을 보냈습니다",
    "type.video": "{name}님이 동영상을 보냈습니다",
    "type.audio": "{name}님이 음성 메시지를 보냈습니다",
    "type.file": "{name}님이 파일을 보냈습니다",
    "type.location": "{name}님이 위치를 공유했습니다",
    "type.sticker": "{name}님이 스티커를 보냈습니다",
    "type.url": "{name}님이 링크를 공유했습니다",
    "type.announcement": "{name}님이 공지를 등록했습니다",
    "type.recall": "{name}님이 메시지를 취소했습니다",
    "type.encrypted": "{name}님이 암호화된 메시지를 보냈습니다",
    "type.joinRoom": "{name}님이 채팅방에 참여했습니다",
    "type.leaveRoom": "{name}님이 채팅방을 나갔습니다",
    "type.addMember": "{name}님이 멤버를 추가했습니다",
    "type.addMembers": "{name}님이 멤버를 추가했습니다",
    "type.deleteMember": "{name}님이 멤버를 내보냈습니다",
    "type.deleteMembers": "{name}님이 멤버를 내보냈습니다",
    "type.cancelInvitations": "{name}님이 초대를 취소했습니다",
    "type.payment": "{name}님이 송금했습니다",
    "type.payment-select": "{name}님이 결제를 요청했습니다",
    "type.waitingCall": "{name}님에게서 전화가 왔습니다",
    "type.missingCall": "{name}님의 부재중 전화",
    "type.endCall": "{name}님이 통화를 종료했습니다",
}

TABLES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "en": MappingProxyType(_EN),
        "zh-Hant": MappingProxyType(_ZH_HANT),
        "zh-Hans": MappingProxyType(_ZH_HANS),
        "ja": MappingProxyType(_JA),
        "ko": MappingProxyType(_KO),
    }
)

#: Message types with a description of their own (every type of imkit-protocol.md that is not
#: shown as text; text-like types fall back to ``type._generic`` when they carry no text).
DESCRIBED_TYPES: frozenset[str] = frozenset(
    k.removeprefix("type.") for k in _EN if k.startswith("type.") and k != "type._generic"
)


def resolve_locale(locale: str | None) -> str:
    """Map a BCP-47-ish locale (``zh-TW``, ``zh_Hant_HK``, ``ko-KR``...) onto one of :data:`LANGS`.

    Chinese: an explicit script wins (``Hant``/``Hans``); otherwise TW, HK and MO mean
    Traditional and everything else (``zh``, ``zh-CN``, ``zh-SG``) Simplified. Unknown → ``en``.
    """
    if not locale:
        return "en"
    parts = locale.strip().lower().replace("_", "-").split("-")
    lang = parts[0]
    if lang == "zh":
        if "hant" in parts:
            return "zh-Hant"
        if "hans" in parts:
            return "zh-Hans"
        return "zh-Hant" if _HANT_REGIONS.intersection(parts[1:]) else "zh-Hans"
    if lang == "ja":
        return "ja"
    if lang == "ko":
        return "ko"
    return "en"


def text(lang: str, key: str, **values: object) -> str:
    """The string ``key`` in ``lang`` (English when the language or key is missing), formatted."""
    table = TABLES.get(lang, TABLES["en"])
    template = table.get(key) or TABLES["en"][key]
    return template.format(**values) if values else template


def describe(lang: str, message_type: str, name: str) -> str:
    """A sentence saying what ``name`` did, for a message shown without its text."""
    key = f"type.{message_type}" if message_type in DESCRIBED_TYPES else "type._generic"
    return text(lang, key, name=name)


def summary(lang: str, count: int) -> str:
    """``N new messages``, with the singular where the language has one."""
    table = TABLES.get(lang, TABLES["en"])
    key = "summary_one" if count == 1 and "summary_one" in table else "summary"
    return text(lang, key, count=count)
