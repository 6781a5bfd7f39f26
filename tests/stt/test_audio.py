"""Audio frames (float32 little-endian PCM, 1 to MAX_AUDIO_FRAME_SAMPLES samples) and files."""

import http.server
import io
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from stt.audio import AudioTooLong, DecodeStopped, UndecodableAudio, decode_file, decode_frame
from stt.errors import SttError

LIMIT = 16384
# The containers the README promises, with a codec each may carry.
ALLOWED = [("pcm_s16le", "wav"), ("flac", "flac"), ("libmp3lame", "mp3"), ("libopus", "ogg"), ("vorbis", "ogg"),
           ("aac", "ipod"), ("aac", "mp4"), ("libopus", "webm"), ("pcm_s16le", "matroska"), ("aac", "adts")]


def test_a_valid_frame_decodes_to_the_same_samples():
    samples = np.linspace(-1, 1, 512, dtype=np.float32)
    decoded = decode_frame(samples.astype("<f4").tobytes(), LIMIT)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, samples)


@pytest.mark.parametrize("count", [1, 512, 2048, LIMIT])
def test_any_size_from_one_sample_to_the_limit_is_accepted(count):
    assert decode_frame(np.zeros(count, "<f4").tobytes(), LIMIT).size == count


def code_of(frame: bytes) -> str:
    with pytest.raises(SttError) as caught:
        decode_frame(frame, LIMIT)
    assert caught.value.spec.category.value == "audio_format"
    assert caught.value.recoverable
    return caught.value.code


def test_bad_frames_are_audio_format_errors():
    assert code_of(b"") == "invalid_audio_frame"
    assert code_of(b"\x00\x00\x80") == "invalid_audio_frame"
    assert code_of(np.zeros(LIMIT + 1, "<f4").tobytes()) == "audio_frame_too_large"
    assert code_of(np.array([0.1, np.nan], "<f4").tobytes()) == "audio_not_finite"
    assert code_of(np.array([0.1, np.inf], "<f4").tobytes()) == "audio_not_finite"
    assert code_of(np.array([0.1, 3000.0], "<f4").tobytes()) == "audio_out_of_range"


def test_slight_overshoot_is_clipped_not_refused():
    decoded = decode_frame(np.array([1.5, -1.2, 0.5], "<f4").tobytes(), LIMIT)
    np.testing.assert_array_equal(decoded, np.array([1.0, -1.0, 0.5], np.float32))



class TestFiles:
    """decode_file: an audio container the server reads, as 16 kHz mono float32."""

    def test_a_flac_in_44_khz_stereo_comes_out_as_the_same_speech_at_16_khz(self, jfk_audio):
        from tests.conftest import JFK_PATH

        audio = decode_file(str(JFK_PATH), max_seconds=60)
        assert audio.dtype == np.float32 and abs(audio.size - jfk_audio.size) < 1600
        assert np.abs(audio).max() <= 1.0

    @pytest.mark.parametrize("codec, container", ALLOWED)
    def test_every_promised_format_decodes_from_a_file_object(self, jfk_audio, codec, container):
        encoded = encode(jfk_audio[:48000], codec, container)
        audio = decode_file(io.BytesIO(encoded), max_seconds=60)
        assert abs(audio.size - 48000) < 3200  # codec padding
        assert np.abs(audio).max() > 0.1

    def test_the_name_of_a_file_does_not_matter_only_its_content(self, jfk_audio, tmp_path):
        wav = tmp_path / "speech.m3u8"
        wav.write_bytes(encode(jfk_audio[:16000], "pcm_s16le", "wav"))
        assert decode_file(str(wav), max_seconds=60).size == 16000

    @pytest.mark.parametrize("content", [b"", b"hello, this is not audio at all\n" * 20, b"RIFF\x00\x00\x00\x00WAVEfmt "])
    def test_what_is_not_audio_is_undecodable(self, content):
        with pytest.raises(UndecodableAudio):
            decode_file(io.BytesIO(content), max_seconds=60)

    def test_decoding_stops_past_the_limit(self, jfk_audio):
        with pytest.raises(AudioTooLong):
            decode_file(io.BytesIO(encode(jfk_audio, "pcm_s16le", "wav")), max_seconds=5)

    def test_decoding_stops_at_its_deadline_or_when_cancelled(self, jfk_audio):
        wav = encode(jfk_audio, "pcm_s16le", "wav")
        with pytest.raises(DecodeStopped):
            decode_file(io.BytesIO(wav), max_seconds=60, deadline=time.monotonic() - 1)
        with pytest.raises(DecodeStopped):
            decode_file(io.BytesIO(wav), max_seconds=60, cancelled=lambda: True)
        assert decode_file(io.BytesIO(wav), max_seconds=60, deadline=time.monotonic() + 60,
                           cancelled=lambda: False).size == jfk_audio.size

    def test_a_container_that_states_no_duration_still_decodes_whole(self, jfk_audio):
        adts = encode(jfk_audio, "aac", "adts")  # raw AAC frames: no duration up front
        assert abs(decode_file(io.BytesIO(adts), max_seconds=60).size - jfk_audio.size) < 3200


def encode(audio: np.ndarray, codec: str, container: str) -> bytes:
    """16 kHz mono float32 audio encoded with FFmpeg (through PyAV)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        rate = {"libopus": 48000, "vorbis": 44100}.get(codec, 16000)
        # FFmpeg's own Vorbis encoder is "experimental", and takes stereo only.
        vorbis = codec == "vorbis"
        stream = output.add_stream(codec, rate=rate, layout="stereo" if vorbis else "mono",
                                   options={"strict": "experimental"} if vorbis else {})
        resampler = av.AudioResampler(format=stream.format.name, layout=stream.layout.name, rate=rate)
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


class TestUploadsCannotReachOut:
    """An upload is audio and nothing else: a file that would make FFmpeg open another
    file or a connection (a playlist, a concat list, a session description) is refused,
    whatever its name, before anything is opened."""

    def test_a_playlist_naming_a_file_of_the_server_is_refused_not_transcribed(self, tmp_path):
        from tests.conftest import JFK_PATH

        playlist = hls_playlist(str(JFK_PATH))
        for name in ("x.m3u8", "x.wav", "x"):
            path = tmp_path / name
            path.write_bytes(playlist)
            with pytest.raises(UndecodableAudio):
                decode_file(str(path), max_seconds=60)  # a large upload, spooled to disk
            in_memory = io.BytesIO(playlist)
            in_memory.name = name
            with pytest.raises(UndecodableAudio):
                decode_file(in_memory, max_seconds=60)  # a small one

    def test_a_playlist_naming_a_url_makes_no_request(self, tmp_path):
        with recording_http_server() as (port, requests):
            for name in ("x.m3u8", "x.mp3"):
                path = tmp_path / name
                path.write_bytes(hls_playlist(f"http://127.0.0.1:{port}/segment.ts"))
                with pytest.raises(UndecodableAudio):
                    decode_file(str(path), max_seconds=60)
                in_memory = io.BytesIO(path.read_bytes())
                in_memory.name = name  # Django's in-memory upload keeps the client's name
                with pytest.raises(UndecodableAudio):
                    decode_file(in_memory, max_seconds=60)
        assert requests == []

    @pytest.mark.parametrize("content", [
        b"ffconcat version 1.0\nfile 'jfk.flac'\n",
        b"ffconcat version 1.0\nfile 'file:/etc/hostname'\n",
        b"ID3\x03\x00\x00\x00\x00\x00\x00#EXTM3U\n#EXTINF:1,\n/etc/hostname\n",  # a playlist behind an ID3 tag
        b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 9 RTP/AVP 0\n",  # SDP: opens UDP
    ], ids=["concat", "concat-file-url", "playlist-after-id3", "sdp"])
    def test_other_instructions_to_open_something_are_refused_at_once(self, content):
        outcome: list[BaseException] = []
        worker = threading.Thread(target=lambda: outcome.append(_raised(content)), daemon=True)
        worker.start()
        worker.join(10)  # an SDP file would have FFmpeg wait for RTP packets
        assert outcome and isinstance(outcome[0], UndecodableAudio)

    def test_an_mp4_without_audio_is_undecodable(self):
        import av

        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="mp4") as output:
            stream = output.add_stream("mpeg4", rate=5)
            stream.width, stream.height = 32, 32
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame) + stream.encode(None):
                output.mux(packet)
        with pytest.raises(UndecodableAudio, match="no audio"):
            decode_file(io.BytesIO(buffer.getvalue()), max_seconds=60)


def _raised(content: bytes) -> BaseException:
    try:
        decode_file(io.BytesIO(content), max_seconds=60)
    except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
        return exc
    return AssertionError("decoded")


def hls_playlist(entry: str) -> bytes:
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:12\n#EXTINF:11.0,\n{entry}\n"
            "#EXT-X-ENDLIST\n").encode()


@contextmanager
def recording_http_server():
    """A local HTTP server that answers 404 and records each path asked for."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            requests.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()
