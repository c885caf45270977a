"""Pairing with an API v2 meter: ask for its button, fetch a token, keep it in a private file.

The device creates a user (and hands out its token) only within 30 s after its button was
pressed; before that ``POST /api/user`` answers 403 ``user:creation-not-enabled``
(docs/v2/authorization.mdx). So ``pair`` asks once, then repeats the request every
``retry_s`` until a token comes or ``wait_s`` has passed (long enough to walk to the meter
cupboard and press within the window). Re-using a user name invalidates the previous token
for that name, so pairing again is also how a lost token is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.adapters.homewizard_v2.client import HomeWizardV2Client
from engine.errors import DeviceError, DeviceResponseError, DeviceUnavailable, EngineError

_LOGGER = logging.getLogger(__name__)

DEFAULT_USER_NAME = "local/mmbc"
# docs/v2/authorization.mdx: "local/" + 1..40 of these characters.
USER_NAME_PATTERN = re.compile(r"^local/[a-zA-Z0-9\-_/\\# ]{1,40}$")
BUTTON_WINDOW_S = 30.0  # the device accepts token requests this long after a press
DEFAULT_WAIT_S = 60.0
DEFAULT_RETRY_S = 1.0
# RFC 6750 token68 characters; HomeWizard's are 32 of A-F0-9, but a longer or lower-case one
# from future firmware is still a token, while whitespace or quotes are not.
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{1,256}$")


class PairingTimeout(DeviceError):
    """Nobody pressed the button (or the meter never answered) within the wait."""


class TokenFileError(EngineError):
    """The token file exists but cannot be used; ``path`` names it (the token never shows)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token and the device it belongs to (the serial pins discovery to that meter)."""

    token: str
    serial: str = ""
    product_type: str = "HWE-P1"
    user_name: str = DEFAULT_USER_NAME

    def __repr__(self) -> str:  # never a credential in a log line or a traceback
        return (
            f"StoredToken(token='***', serial={self.serial!r}, "
            f"product_type={self.product_type!r}, user_name={self.user_name!r})"
        )


def user_name_for(name: str) -> str:
    """``mmbc`` or ``local/mmbc`` -> ``local/mmbc``; ValueError if the device would refuse it."""
    full = name if name.startswith("local/") else f"local/{name}"
    if not USER_NAME_PATTERN.match(full):
        msg = f"user name {name!r} is not 1-40 of a-z A-Z 0-9 - _ \\ / # and space after 'local/'"
        raise ValueError(msg)
    return full


def is_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


async def pair(
    client: HomeWizardV2Client,
    *,
    prompt: Callable[[str], object],
    user_name: str = DEFAULT_USER_NAME,
    wait_s: float = DEFAULT_WAIT_S,
    retry_s: float = DEFAULT_RETRY_S,
) -> str:
    """Ask for the button (through ``prompt``) and return the token once the meter grants it.

    Raises DeviceUnavailable when the first request finds nobody (no point asking for a
    button), DeviceResponseError when the meter refuses for another reason than the button
    (a bad name), PairingTimeout when ``wait_s`` passes without a token. Sleeps on the loop's
    clock. The token is returned, not installed in ``client``; it never goes to the log.
    """
    full_name = user_name_for(user_name)
    loop = asyncio.get_running_loop()
    token = await client.request_token(full_name)  # pressed already: no need to ask
    if token is None:
        prompt(
            f"Press the button on the HomeWizard meter ({client.identifier}) now; "
            f"waiting up to {wait_s:g} s."
        )
    deadline_s = loop.time() + wait_s
    last_error: DeviceError | None = None
    while token is None:
        if loop.time() >= deadline_s:
            detail = f" (last error: {last_error})" if last_error is not None else ""
            msg = f"{client.name}: no token within {wait_s:g} s: was the button pressed?{detail}"
            raise PairingTimeout(msg, device=client.name)
        await asyncio.sleep(min(retry_s, max(0.0, deadline_s - loop.time())))
        try:
            token = await client.request_token(full_name)
        except DeviceUnavailable as err:  # Wi-Fi hiccup while the user walks over: go on
            last_error = err
    if not is_token(token):
        msg = f"{client.name}: the meter's token is not a bearer token"
        raise DeviceResponseError(msg, device=client.name, retryable=False)
    _LOGGER.info("%s: paired as %s", client.name, full_name)
    return token


# -- the token file --------------------------------------------------------------------------


def save_token(path: Path, stored: StoredToken) -> None:
    """Write ``stored`` to ``path`` readable by its owner only (0600), atomically.

    The parent directory is created (0700) if missing. The file is written under a temporary
    name with mode 0600 from its creation, then renamed over ``path``, so no moment exists in
    which the token is on disk with wider permissions or half written.
    """
    if not is_token(stored.token):
        msg = "refusing to store something that is not a bearer token"
        raise ValueError(msg)
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = {
        "token": stored.token,
        "serial": stored.serial,
        "product_type": stored.product_type,
        "user_name": stored.user_name,
    }
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, 0o600)  # mkstemp already uses 0600; the umask cannot widen it
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def load_token(path: Path) -> StoredToken | None:
    """The stored token, None if ``path`` does not exist; TokenFileError if it is unusable.

    A plain file holding only the token (pasted by hand) is accepted too. A file others can
    read still works but is reported, once per load, with the command that fixes it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(path, f"cannot read it ({exc.__class__.__name__})") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _LOGGER.warning("token file %s is readable by others; chmod 600 %s", path, path)
    stripped = text.strip()
    if is_token(stripped):
        return StoredToken(token=stripped)
    try:
        payload = json.loads(stripped)
    except ValueError:
        raise TokenFileError(path, "neither a token nor a JSON object") from None
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not is_token(token):
        raise TokenFileError(path, "has no valid 'token'")
    assert isinstance(payload, dict)

    def text_of(key: str, default: str) -> str:
        value = payload.get(key, default)
        return value if isinstance(value, str) else default

    return StoredToken(
        token=token,
        serial=text_of("serial", ""),
        product_type=text_of("product_type", "HWE-P1"),
        user_name=text_of("user_name", DEFAULT_USER_NAME),
    )
