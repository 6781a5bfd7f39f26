"""sniff_container: an upload's container told by its first bytes, from an allow-list."""

import numpy as np
import pytest

from stt.containers import AAC, CONTAINERS, MP3, sniff_container
from tests.stt.test_audio import ALLOWED, encode


@pytest.fixture(scope="module")
def tone() -> np.ndarray:
    return (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)


@pytest.mark.parametrize("codec, container", ALLOWED)
def test_each_promised_container_is_recognised(tone, codec, container):
    assert sniff_container(encode(tone, codec, container)[:64 * 1024]) in CONTAINERS


def test_an_mp3_behind_an_id3_tag_or_after_some_junk_is_still_an_mp3(tone):
    mp3 = encode(tone, "libmp3lame", "mp3")
    frames = mp3[10 + syncsafe(mp3[6:10]):] if mp3[:3] == b"ID3" else mp3
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 2, 0]) + b"\x00" * 256
    assert sniff_container(tag + frames) == MP3
    assert sniff_container(frames) == MP3
    assert sniff_container(b"\x00" * 417 + frames) == MP3


def test_raw_aac_with_adts_headers_is_aac(tone):
    assert sniff_container(encode(tone, "aac", "adts")) == AAC


@pytest.mark.parametrize("head", [
    b"", b"RIFF", b"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1/x.ts\n", b"ffconcat version 1.0\nfile 'x.wav'\n",
    b"v=0\nm=audio 9 RTP/AVP 0\n", b"<?xml version='1.0'?><MPD/>", b"%PDF-1.4", b"\x89PNG\r\n\x1a\n",
    b"\xff\xfb" + b"\x00" * 100,  # one MPEG sync word, no frame after it
])
def test_anything_else_is_no_container(head):
    assert sniff_container(head) is None


def test_random_bytes_are_no_container():
    generator = np.random.default_rng(7)
    found = [sniff_container(generator.integers(0, 256, 4096, dtype=np.uint8).tobytes()) for _ in range(300)]
    assert found.count(None) == len(found)


def syncsafe(four: bytes) -> int:
    value = 0
    for byte in four:
        value = value << 7 | byte & 0x7F
    return value
