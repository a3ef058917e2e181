"""
Profiles as vCards (XEP-0054) and avatar hashes in presence (XEP-0153).

The profile of the REST API (C{/login}, C{/me}) and the vCard of XMPP clients are one record:
the store's profile fields (L{xmppjson.storage.PROFILE_FIELDS}).  A vCard is built from them on
every C{get} and written into them on every C{set}, so a change on either side is what the other
side reads next.

The avatar is the profile's C{avatar} string, in one of two forms that a web page can put
straight into C{<img src>}:
 - a C{data:} URL (C{data:image/png;base64,...}): the vCard's C{PHOTO} carries it as C{TYPE}
   and C{BINVAL}, and presence carries its SHA-1 (XEP-0153);
 - any other string, meant to be an C{http(s)} URL: the vCard's C{PHOTO} carries it as
   C{EXTVAL}, and presence says "no hash to advertise" (an C{<x/>} without C{<photo/>}),
   since the server does not fetch images.

The SHA-1 of each online user's avatar is cached (computed once when their first session
opens, again when the profile changes through a vCard C{set} or L{VCards.profileChanged}), so
stamping a presence costs no database round trip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.parse
from typing import TYPE_CHECKING, Any

from twisted.words.xish import domish

from xmppjson.error import BadRequest, Forbidden, NotFound, ServiceUnavailable
from xmppjson.im.stanzas import iqResult, tryJID
from xmppjson.storage import PROFILE_FIELDS, SessionState
from xmppjson.xmltext import isElement

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"

#: Where each profile field lives in a vCard: the element, and the child of it that holds the
#: value for the structured ones (ORG, ADR, EMAIL, TEL).
FIELD_PATHS: dict[str, tuple[str, str | None]] = {
    "full_name": ("FN", None),
    "nick_name": ("NICKNAME", None),
    "birthday": ("BDAY", None),
    "company": ("ORG", "ORGNAME"),
    "department": ("ORG", "ORGUNIT"),
    "position": ("TITLE", None),
    "role": ("ROLE", None),
    "streer_2": ("ADR", "EXTADD"),
    "street": ("ADR", "STREET"),
    "city": ("ADR", "LOCALITY"),
    "state": ("ADR", "REGION"),
    "zip_code": ("ADR", "PCODE"),
    "country": ("ADR", "CTRY"),
    "phone": ("TEL", "NUMBER"),
    "email": ("EMAIL", "USERID"),
    "www": ("URL", None),
    "about": ("DESC", None),
}

#: The order elements are written in (the XEP-0054 DTD's), with the type flags that mark the
#: one value of each structured element.
_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("FN", ()),
    ("NICKNAME", ()),
    ("PHOTO", ()),
    ("BDAY", ()),
    ("ADR", ("WORK",)),
    ("TEL", ("WORK", "VOICE")),
    ("EMAIL", ("INTERNET", "PREF")),
    ("TITLE", ()),
    ("ROLE", ()),
    ("ORG", ()),
    ("URL", ()),
    ("DESC", ()),
)

#: The parts of a structured name (N), in the order they make a display name when FN is absent.
_NAME_PARTS = ("PREFIX", "GIVEN", "MIDDLE", "FAMILY", "SUFFIX")

#: Longest text of one vCard field, in characters (as the REST API's profile fields).
MAX_FIELD = 16 * 1024

#: Default longest avatar, in characters of base64 (64 KiB: an image of about 48 KiB).
MAX_AVATAR = 64 * 1024

# Image types told by their first bytes, for a PHOTO that comes without a TYPE.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _text(element: domish.Element) -> str:
    return "".join(c for c in element.children if isinstance(c, str)).strip()


def _children(element: domish.Element, name: str) -> list[domish.Element]:
    return [c for c in element.elements() if c.name == name and c.uri == NS_VCARD]


def _sniff(data: bytes) -> str:
    for magic, mediaType in _MAGIC:
        if data.startswith(magic):
            return mediaType
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def parseDataURL(url: str) -> tuple[str, bytes] | None:
    """
    The media type and bytes of a C{data:} URL (RFC 2397), or C{None} if C{url} is not one or
    cannot be decoded.
    """
    if not url.startswith("data:"):
        return None
    header, comma, data = url[5:].partition(",")
    if not comma:
        return None
    params = header.split(";")
    mediaType = params[0].strip() or "application/octet-stream"
    if params[-1].strip().lower() == "base64":
        compact = "".join(data.split())
        try:
            return mediaType, base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            return None
    return mediaType, urllib.parse.unquote_to_bytes(data)


def avatarHash(avatar: str | None) -> str | None:
    """
    What XEP-0153 presence advertises for an avatar: the hex SHA-1 of its image for a
    C{data:} URL, C{""} for no avatar, C{None} for one the server cannot hash (an external
    URL, an undecodable C{data:} URL).
    """
    if not avatar:
        return ""
    parsed = parseDataURL(avatar)
    if parsed is None:
        return None
    # SHA-1 because XEP-0153 says so: it names an image, it protects nothing.
    return hashlib.sha1(parsed[1]).hexdigest()


def buildVCard(profile: dict[str, Any]) -> domish.Element:
    """The C{<vCard xmlns='vcard-temp'/>} of a profile (empty when nothing is set)."""
    vcard = domish.Element((NS_VCARD, "vCard"))
    values: dict[str, list[tuple[str | None, str]]] = {}
    for field, (name, child) in FIELD_PATHS.items():
        value = profile.get(field)
        if value:
            values.setdefault(name, []).append((child, value))
    for name, flags in _LAYOUT:
        if name == "PHOTO":
            photo = _photo(profile.get("avatar"))
            if photo is not None:
                vcard.addChild(photo)
            continue
        found = values.get(name)
        if not found:
            continue
        element = vcard.addElement(name)
        for flag in flags:
            element.addElement(flag)
        for child, value in found:
            if child is None:
                element.addContent(value)
            else:
                element.addElement(child, content=value)
    return vcard


def _photo(avatar: str | None) -> domish.Element | None:
    if not avatar:
        return None
    photo = domish.Element((NS_VCARD, "PHOTO"))
    parsed = parseDataURL(avatar)
    if parsed is not None:
        mediaType, data = parsed
        photo.addElement("TYPE", content=mediaType)
        photo.addElement("BINVAL", content=base64.b64encode(data).decode("ascii"))
    elif avatar.startswith("data:"):
        return None  # a data: URL that does not decode: nothing a client could show
    else:
        photo.addElement("EXTVAL", content=avatar)
    return photo


def parseVCard(vcard: domish.Element, maxAvatar: int = MAX_AVATAR) -> dict[str, str | None]:
    """
    The profile fields a vCard sets: every key of L{PROFILE_FIELDS}, C{None} for what the
    vCard leaves out (a vCard C{set} replaces the whole vCard, XEP-0054 section 3.2).
    Elements with no profile field (N apart, JABBERID, LOGO, ...) are ignored; of repeated
    elements (several TEL, ...) the first with a value counts.

    @raise BadRequest: for a PHOTO whose BINVAL is not base64 (C{bad-request}), a value or
        avatar over its limit (C{not-acceptable}).
    """
    fields: dict[str, str | None] = dict.fromkeys(PROFILE_FIELDS)
    byElement: dict[str, list[tuple[str, str | None]]] = {}
    for field, (name, child) in FIELD_PATHS.items():
        byElement.setdefault(name, []).append((field, child))
    for name, wanted in byElement.items():
        for element in _children(vcard, name):
            found: dict[str, str] = {}
            for field, child in wanted:
                if child is None:
                    text = _text(element)
                else:
                    parts = _children(element, child)
                    text = _text(parts[0]) if parts else ""
                    if not text and name in ("EMAIL", "TEL") and not parts:
                        text = _text(element)  # <EMAIL>a@b</EMAIL>: lenient with old clients
                if text:
                    found[field] = text
            if found:
                fields.update(found)
                break
    if not fields["full_name"]:
        for n in _children(vcard, "N"):
            words: list[str] = []
            for part in _NAME_PARTS:
                elements = _children(n, part)
                if elements and _text(elements[0]):
                    words.append(_text(elements[0]))
            name = " ".join(words)
            if name:
                fields["full_name"] = name
                break
    for field, value in fields.items():
        if value is not None and len(value) > MAX_FIELD:
            raise BadRequest(f"{FIELD_PATHS[field][0]} is longer than {MAX_FIELD} characters",
                             condition="not-acceptable")
    photos = _children(vcard, "PHOTO")
    fields["avatar"] = _avatar(photos[0], maxAvatar) if photos else None
    return fields


def _avatar(photo: domish.Element, maxAvatar: int) -> str | None:
    binvals = _children(photo, "BINVAL")
    if binvals:
        compact = "".join(_text(binvals[0]).split())
        if not compact:
            return None
        if len(compact) > maxAvatar:
            raise BadRequest(f"the avatar is larger than {maxAvatar} characters of base64",
                             condition="not-acceptable")
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the PHOTO's BINVAL is not base64") from None
        types = _children(photo, "TYPE")
        mediaType = _text(types[0]) if types else ""
        if not mediaType or any(c in mediaType for c in ";, \t") or len(mediaType) > 100:
            mediaType = _sniff(data)
        return f"data:{mediaType};base64,{base64.b64encode(data).decode('ascii')}"
    extvals = _children(photo, "EXTVAL")
    if extvals:
        url = _text(extvals[0])
        if len(url) > MAX_FIELD:
            raise BadRequest(f"EXTVAL is longer than {MAX_FIELD} characters",
                             condition="not-acceptable")
        return url or None
    return None


class VCards:
    """
    The C{vcard-temp} iq protocol on users' bare JIDs, and the avatar hash in their presence.

    @ivar maxAvatar: the longest avatar a vCard C{set} may carry, in characters of base64 (from
        the configuration's C{maxAvatarSize} when it has one).
    """

    def __init__(self, server: IMServer):
        self.server = server
        self.store = server.store
        self.maxAvatar: int = getattr(server.config, "maxAvatarSize", MAX_AVATAR)
        # localpart -> avatarHash() of each user with a session.
        self._hashes: dict[str, str | None] = {}
        server.iq.register(NS_VCARD, self.handleIQ, account=True, user=True)

    # the avatar hash cache ---------------------------------------------------

    def isCached(self, localpart: str) -> bool:
        return localpart in self._hashes

    async def load(self, localpart: str, state: SessionState | None = None) -> None:
        """
        Cache a user's avatar hash (when a session opens); a no-op when it is cached.

        @param state: what L{IStore.getSessionState} read, if it was; else the profile is read.
        """
        if localpart in self._hashes:
            return
        if state is not None:
            profile = state.profile
        else:
            profile = await self.store.getProfile(localpart)
        if localpart not in self._hashes:
            self._hashes[localpart] = avatarHash(profile.get("avatar") if profile else None)

    def release(self, localpart: str) -> None:
        """Forget a user's avatar hash when their last session is gone."""
        self._hashes.pop(localpart, None)

    def photoHash(self, localpart: str) -> str | None:
        """The cached avatar hash of an online user (see L{avatarHash})."""
        return self._hashes.get(localpart)

    def stampPresence(self, localpart: str, presence: domish.Element) -> None:
        """
        Put the user's avatar hash into an available presence (XEP-0153), replacing whatever
        C{vcard-temp:x:update} the client put there: the server knows the stored avatar.
        """
        if localpart not in self._hashes:
            return
        digest = self._hashes[localpart]
        presence.children = [
            c for c in presence.children
            if not (isElement(c) and c.name == "x" and c.uri == NS_VCARD_UPDATE)
        ]
        update = presence.addElement((NS_VCARD_UPDATE, "x"))
        if digest is not None:
            photo = update.addElement("photo")
            if digest:
                photo.addContent(digest)

    async def profileChanged(self, localpart: str, profile: dict[str, Any] | None = None) -> None:
        """
        The user's profile changed (vCard set, REST): refresh the cached avatar hash and, if it
        changed, broadcast the user's presence again so contacts fetch the new avatar.

        @param profile: the new profile if the caller has it (at least its C{avatar}); read
            from the store otherwise.
        """
        if localpart not in self._hashes:
            return  # offline: the hash is computed at the next login
        if profile is None:
            profile = await self.store.getProfile(localpart)
            if profile is None:
                return
        digest = avatarHash(profile.get("avatar"))
        if localpart not in self._hashes or self._hashes[localpart] == digest:
            return
        self._hashes[localpart] = digest
        bare = f"{localpart}@{self.server.domain}"
        for session in self.server.router.availableSessionsOf(bare):
            self.server.presence.refresh(session)

    # the vcard-temp protocol ---------------------------------------------

    def handleIQ(self, session: Session, iq: domish.Element, child: domish.Element):
        """vCard get (own or another user's bare JID) and set (own only)."""
        if child.name != "vCard":
            raise BadRequest("expected a <vCard/>")
        to = iq.getAttribute("to")
        target = tryJID(to) if to else None
        own = target is None or target.userhost() == session.bare
        if iq.getAttribute("type") == "set":
            if not own:
                raise Forbidden("you may only change your own vCard")
            return self._set(session, iq, child)
        # Not own: IQHandler only hands over iqs to another local user's bare JID.
        localpart = session.localpart if own or target is None else (target.user or "")
        return self._get(session, iq, localpart, own)

    async def _get(self, session: Session, iq: domish.Element, localpart: str, own: bool) -> domish.Element:
        profile = await self.store.getProfile(localpart)
        if profile is None:
            # Unknown user: the same answer as for any stanza to an account that does not exist.
            raise ServiceUnavailable("no such user")
        vcard = buildVCard(profile)
        if not own and not vcard.children:
            raise NotFound("this user has no vCard")
        reply = iqResult(iq, session.bare if own else None)
        reply.addChild(vcard)
        return reply

    async def _set(self, session: Session, iq: domish.Element, vcard: domish.Element) -> None:
        fields = parseVCard(vcard, self.maxAvatar)
        await self.store.updateProfile(session.localpart, fields)
        if session.active:
            session.deliver(iqResult(iq, session.bare))
        await self.profileChanged(session.localpart, fields)
