"""WebRTC plumbing on aiortc: offers, peer connections, ICE addresses, encoder timing.

Three things aiortc has no setting for, each set up once per process by `setup_aiortc`:

- *ICE host addresses.* aioice gathers every interface but loopback. A server on 127.0.0.1
  in a network with only loopback (CI, a kiosk) must offer a 127.0.0.1 candidate, and a
  deployment may want to name its addresses: ``--ice-host``.
- *Encode time.* The sender runs its encoder in a thread pool; we wrap the encoder factory so
  `/metrics` can report how long each encode took.
- *ICE consent.* aioice checks consent every 5 s and gives up after 6 failures (30 s); a
  viewer that vanished would hold its encoder that long. We check every 2 s, 4 failures.
- *The audio jitter buffer.* aiortc's audio receiver holds 4 packets (80 ms) before decoding
  anything; on loopback and LAN one is enough, and the glass-to-glass latency pays for each.

`parse_offer` validates an SDP offer before aiortc sees it, so a bad offer gets a clear 400
instead of an exception deep inside the stack.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aioice.ice
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.sdp import SessionDescription

log = logging.getLogger(__name__)

AUDIO_CODECS = ("opus", "PCMU", "PCMA")
VIDEO_CODECS = {"vp8": "VP8", "h264": "H264"}  # what we can send, by query name
MAX_SDP_BYTES = 64 * 1024
CONSENT_INTERVAL_S = 2
CONSENT_FAILURES = 4


class OfferError(ValueError):
    """The offer cannot be used: the message says why (sent back as the 400 body)."""


@dataclass(frozen=True)
class MediaLine:
    kind: str  # "audio" | "video" | "application"
    direction: str  # the offerer's: sendrecv | sendonly | recvonly | inactive
    codecs: tuple[str, ...]  # codec names offered

    @property
    def sends(self) -> bool:
        """The offerer sends media on it (we receive)."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """The offerer receives media on it (we may send)."""
        return self.direction in ("sendrecv", "recvonly")


def parse_offer(sdp: str, need_audio_in: bool) -> list[MediaLine]:
    """Check an SDP offer and list its m-lines. ``need_audio_in``: the offer must send audio
    (WHIP ingest); otherwise it must receive audio or video (WHEP)."""
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise OfferError(f"SDP offer larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("not an SDP offer (it must start with 'v=0')")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as err:  # aiortc raises ValueError, KeyError, IndexError... on bad SDP
        raise OfferError(f"malformed SDP offer: {err!r}") from err
    lines = [
        MediaLine(m.kind, m.direction or "sendrecv", tuple(c.name for c in m.rtp.codecs))
        for m in description.media
    ]
    if not lines:
        raise OfferError("the SDP offer has no media lines")
    audio = [m for m in lines if m.kind == "audio"]
    video = [m for m in lines if m.kind == "video"]
    for m in audio:
        if m.direction != "inactive" and not set(m.codecs) & set(AUDIO_CODECS):
            raise OfferError(
                f"no supported audio codec in the offer (got {', '.join(m.codecs) or 'none'};"
                f" supported: {', '.join(AUDIO_CODECS)})"
            )
    for m in video:
        if m.receives and not set(m.codecs) & set(VIDEO_CODECS.values()):
            raise OfferError(
                f"no supported video codec in the offer (got {', '.join(m.codecs) or 'none'};"
                f" supported: {', '.join(VIDEO_CODECS.values())})"
            )
    if need_audio_in and not any(m.sends for m in audio):
        raise OfferError("the offer sends no audio: WHIP needs the speaker's audio track")
    if not need_audio_in and not any(m.receives for m in audio + video):
        raise OfferError("the offer receives neither audio nor video")
    if "a=candidate" not in sdp and "a=ice-ufrag" not in sdp:
        raise OfferError("the offer has no ICE credentials")
    if "a=fingerprint:" not in sdp:  # aiortc would answer it, and DTLS could never connect
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint)")
    return lines


def make_peer_connection(ice_servers: list[IceServer]) -> RTCPeerConnection:
    """A peer connection with exactly the configured ICE servers (none: host candidates only;
    without this aiortc would contact a public STUN server)."""
    servers = [RTCIceServer(s.url, s.username, s.credential) for s in ice_servers]
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=servers))


def prefer_codec(transceiver, codec: str) -> None:
    """Send ``codec`` (``vp8`` / ``h264``) on a video transceiver whose remote offer has been
    set. aiortc negotiates codecs in `setRemoteDescription` (and `setCodecPreferences` only
    filters by exact parameters), so the negotiated list is reordered: the sender encodes with
    its first codec. OfferError when the offer does not have it."""
    name = VIDEO_CODECS[codec].lower()
    codecs = transceiver._codecs  # aiortc's negotiated list: no public setter
    wanted = [c for c in codecs if c.mimeType.lower() == f"video/{name}"]
    if not wanted:
        raise OfferError(f"the offer has no {VIDEO_CODECS[codec]} video (video_codec={codec})")
    rtx = {c.parameters.get("apt"): c for c in codecs if c.mimeType.lower() == "video/rtx"}
    ordered = []
    for c in wanted + [c for c in codecs if c not in wanted and c.mimeType.lower() != "video/rtx"]:
        ordered.append(c)
        if c.payloadType in rtx:
            ordered.append(rtx[c.payloadType])
    transceiver._codecs = ordered


@dataclass(frozen=True)
class IceServer:
    """One ``--ice-server``: ``stun:host:port`` or ``turn:user:password@host:port``
    (``turns:`` too); the browser gets it in `RTCIceServer` form."""

    url: str
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, spec: str) -> IceServer:
        scheme, _, rest = spec.partition(":")
        if scheme not in ("stun", "turn", "turns") or not rest:
            raise ValueError(
                f"--ice-server {spec!r}: use stun:HOST:PORT or turn:USER:PASS@HOST:PORT"
            )
        if "@" in rest:
            credentials, _, host = rest.rpartition("@")
            user, _, password = credentials.partition(":")
            return cls(f"{scheme}:{host}", user, password)
        return cls(spec)

    def for_browser(self) -> dict:
        out: dict = {"urls": self.url}
        if self.username is not None:
            out.update(username=self.username, credential=self.credential)
        return out


# ---- process-wide setup ---------------------------------------------------------------------
_original_host_addresses = aioice.ice.get_host_addresses
_original_get_encoder = aiortc.rtcrtpsender.get_encoder
_original_jitter_buffer = aiortc.rtcrtpreceiver.JitterBuffer


def setup_aiortc(
    ice_hosts: list[str] | None,
    listen_host: str,
    on_encode: Callable[[str, float], None] | None = None,
    audio_prefetch: int = 1,
) -> None:
    """Configure aiortc for this process (see the module docstring). ICE gathers on
    ``ice_hosts`` when given; else on every interface but loopback (aioice's default) plus
    127.0.0.1 when the server listens on loopback: a browser on the same machine pairs with
    whichever it can (Chromium and Firefox leave their own loopback out by default)."""
    hosts = list(ice_hosts or [])
    for host in hosts:
        ipaddress.ip_address(host)  # ValueError names a bad --ice-host
    loopback = not hosts and _is_loopback(listen_host)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if hosts:
            return [h for h in hosts if (":" in h and use_ipv6) or (":" not in h and use_ipv4)]
        found = _original_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        return ["127.0.0.1", *found] if loopback and use_ipv4 else found

    aioice.ice.get_host_addresses = host_addresses
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL_S
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES

    def get_encoder(codec):
        encoder = _original_get_encoder(codec)
        return _TimedEncoder(encoder, codec.name, on_encode) if on_encode else encoder

    aiortc.rtcrtpsender.get_encoder = get_encoder

    def jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False):
        if not is_video:
            prefetch = min(prefetch, audio_prefetch)
        return _original_jitter_buffer(capacity, prefetch=prefetch, is_video=is_video)

    aiortc.rtcrtpreceiver.JitterBuffer = jitter_buffer
    log.info("ICE host addresses: %s", ", ".join(host_addresses(True, True)))


class _TimedEncoder:
    """An aiortc encoder that reports how long each `encode` took."""

    def __init__(self, encoder, codec: str, on_encode: Callable[[str, float], None]):
        self._encoder = encoder
        self._codec = codec
        self._on_encode = on_encode

    def encode(self, frame, force_keyframe: bool = False):
        start = time.perf_counter()
        result = self._encoder.encode(frame, force_keyframe)
        self._on_encode(self._codec, time.perf_counter() - start)
        return result

    def __getattr__(self, name):  # pack, target_bitrate...
        return getattr(self._encoder, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._encoder, name, value)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
