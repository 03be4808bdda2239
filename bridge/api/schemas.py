"""Request bodies of the app API, with bounds on lengths and character sets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.config import MAX_FOREGROUND_TTL
from bridge.models import ApnsEnvironment, PushContent

DEVICE_ID = r"^[A-Za-z0-9._:\-]+$"
PUSH_TOKEN = r"^[A-Za-z0-9._:\-]+$"
LOCALE = r"^[A-Za-z]{2,8}([_-][A-Za-z0-9]{1,8}){0,3}$"
CLIENT_ID = r"^[^\s]+$"
#: The device id of the OpenAPI examples.
EXAMPLE_DEVICE_ID = "8F3C2A10-device"

PushType = Literal["ios", "ios-voip", "fcm", "android", "web"]
StateName = Literal["foreground", "background"]
#: Standard or URL-safe base64 (padding optional): the 32-byte ``contentKey``.
BASE64 = r"^[A-Za-z0-9+/_-]+={0,2}$"


class _Body(BaseModel):
    # Apps send IMKIT's own request; fields we don't use are ignored, not rejected.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class SubscribeBody(_Body):
    type: PushType = Field(description="Push platform: ios, ios-voip (APNs) or fcm, android, web (FCM)")
    token: str = Field(min_length=1, max_length=4096, pattern=PUSH_TOKEN, description="APNs device token or FCM registration token")
    deviceId: str = Field(min_length=1, max_length=128, pattern=DEVICE_ID)
    locale: str | None = Field(None, max_length=35, pattern=LOCALE, description="e.g. en-US, zh-TW, ja")
    state: StateName | None = None
    ttl: int | None = Field(None, ge=1, le=MAX_FOREGROUND_TTL, description="seconds a foreground state lasts (at most 3600)")
    clientId: str | None = Field(None, min_length=1, max_length=128, pattern=CLIENT_ID, description="with IM-API-KEY only")
    apnsEnvironment: ApnsEnvironment | None = Field(
        None, description="ios/ios-voip only: where the token was issued (debug builds: sandbox); default from config, corrected on BadDeviceToken"
    )
    content: PushContent | None = Field(None, description="what pushes carry: full, hidden (ids only) or encrypted; default BRIDGE_PUSH_CONTENT")
    contentKey: str | None = Field(
        None, min_length=43, max_length=44, pattern=BASE64, description="for content=encrypted: the device's 32-byte key, base64"
    )

    model_config = ConfigDict(
        extra="ignore",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"type": "ios", "token": "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2", "deviceId": EXAMPLE_DEVICE_ID, "locale": "zh-TW"}]},
    )


class UnsubscribeBody(_Body):
    type: PushType
    deviceId: str = Field(min_length=1, max_length=128, pattern=DEVICE_ID)
    clientId: str | None = Field(None, min_length=1, max_length=128, pattern=CLIENT_ID)

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"type": "ios", "deviceId": EXAMPLE_DEVICE_ID}]})


class StateBody(_Body):
    deviceId: str = Field(min_length=1, max_length=128, pattern=DEVICE_ID)
    state: StateName
    ttl: int | None = Field(
        None, ge=1, le=MAX_FOREGROUND_TTL, description="seconds a foreground state lasts (default BRIDGE_FOREGROUND_TTL, at most 3600)"
    )
    clientId: str | None = Field(None, min_length=1, max_length=128, pattern=CLIENT_ID)

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"deviceId": EXAMPLE_DEVICE_ID, "state": "foreground", "ttl": 120}]})


#: A push id as every push carries it (``pushId``): 32 lowercase hex characters.
PUSH_ID = r"^[0-9a-f]{32}$"


class AckBody(_Body):
    pushId: str = Field(min_length=32, max_length=32, pattern=PUSH_ID, description="the pushId the push carried")
    clientId: str | None = Field(None, min_length=1, max_length=128, pattern=CLIENT_ID, description="with IM-API-KEY only")

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"pushId": "3f2a9c0d1e4b5a6978c1d2e3f4a5b6c7"}]})
