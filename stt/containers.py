"""Which audio container a file is, told by its first bytes alone.

Uploads are decoded by FFmpeg, which knows hundreds of formats. Some of them are not
audio but instructions to open something else: an HLS playlist or a concat list names
other files or URLs, an SDP file opens network sockets. FFmpeg's own probe picks such a
demuxer from the content or the file name. So the file API never lets it probe: this
module recognises the containers the service promises (the README's list), and
decoding forces that demuxer. Anything else is not audio to this server.
"""

from __future__ import annotations

# FFmpeg's demuxer for each container this server reads.
WAV, FLAC, MP3, OGG, MP4, MATROSKA, AAC = "wav", "flac", "mp3", "ogg", "mov", "matroska", "aac"
CONTAINERS = (WAV, FLAC, MP3, OGG, MP4, MATROSKA, AAC)
# The names users know them by, for error messages.
CONTAINER_NAMES = ("WAV", "FLAC", "MP3", "Ogg (Opus, Vorbis)", "M4A/MP4", "WebM/Matroska", "AAC (ADTS)")
# How much of the file the sniffing reads: MP3s may start with junk or a long ID3 tag.
SNIFF_BYTES = 64 * 1024

# ISO base media (MP4, M4A, MOV) files start with one of these boxes.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
# MPEG audio bitrates (kbit/s) by (MPEG-1?, layer), index 1-14 of the header.
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# Frames in a row that make junk-prefixed bytes an MP3 (one sync word is 1 in 2048 by chance).
_FRAMES_IN_A_ROW = 3


def sniff_container(head: bytes) -> str | None:
    """The demuxer for a file starting with `head` (its first SNIFF_BYTES), or None when
    it is none of CONTAINERS."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return WAV
    if head[:4] == b"fLaC":
        return FLAC
    if head[:4] == b"OggS":
        return OGG
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska and WebM
        return MATROSKA
    if head[4:8] in _ISO_BOXES:
        return MP4
    body = _after_id3(head)
    if body[:4] == b"fLaC":
        return FLAC
    if _adts_frame_length(body, 0):
        return AAC
    return MP3 if _starts_mpeg_audio(body) else None


def _after_id3(head: bytes) -> bytes:
    """`head` past its ID3v2 tag (MP3 and AAC files may start with one)."""
    if head[:3] != b"ID3" or len(head) < 10:
        return head
    size = 0
    for byte in head[6:10]:  # a syncsafe integer: 7 bits a byte
        size = size << 7 | (byte & 0x7F)
    footer = 10 if head[5] & 0x10 else 0
    return head[10 + size + footer:]


def _starts_mpeg_audio(body: bytes) -> bool:
    """MPEG audio frames at the start, or a run of them after some junk."""
    if _mpeg_frames_from(body, 0) >= min(2, _frames_possible(body, 0)):
        return True
    position = body.find(b"\xff", 1)
    while position != -1 and position + 4 <= len(body):
        if _mpeg_frames_from(body, position) >= _FRAMES_IN_A_ROW:
            return True
        position = body.find(b"\xff", position + 1)
    return False


def _frames_possible(body: bytes, start: int) -> int:
    """How many frames can be checked from `start` (a short file holds one or two)."""
    first = _mpeg_frame_length(body, start)
    if not first:
        return 1
    return 1 if start + first + 4 > len(body) else 2


def _mpeg_frames_from(body: bytes, start: int) -> int:
    """Valid MPEG audio frames in a row from `start`, up to _FRAMES_IN_A_ROW."""
    count, position = 0, start
    while count < _FRAMES_IN_A_ROW:
        length = _mpeg_frame_length(body, position)
        if not length:
            break
        count += 1
        position += length
    return count


def _mpeg_frame_length(body: bytes, at: int) -> int:
    """The length of the MPEG audio frame whose header is at `at`, or 0 if none is."""
    if at + 4 > len(body) or body[at] != 0xFF or body[at + 1] & 0xE0 != 0xE0:
        return 0
    version, layer_bits = body[at + 1] >> 3 & 3, body[at + 1] >> 1 & 3
    bitrate_index, rate_index = body[at + 2] >> 4, body[at + 2] >> 2 & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return 0
    layer, mpeg1 = 4 - layer_bits, version == 3
    bitrate = _BITRATES[(mpeg1, min(layer, 2) if not mpeg1 else layer)][bitrate_index - 1] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    padding = body[at + 2] >> 1 & 1
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4
    per_frame = 72 if layer == 3 and not mpeg1 else 144
    return per_frame * bitrate // rate + padding


def _adts_frame_length(body: bytes, at: int) -> int:
    """The length of the ADTS (raw AAC) frame whose header is at `at`, or 0."""
    if at + 7 > len(body) or body[at] != 0xFF or body[at + 1] & 0xF6 != 0xF0:
        return 0
    if body[at + 2] >> 2 & 0xF > 12:  # sampling frequency index
        return 0
    length = (body[at + 3] & 3) << 11 | body[at + 4] << 3 | body[at + 5] >> 5
    return length if length >= 7 else 0
