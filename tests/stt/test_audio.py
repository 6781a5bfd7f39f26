"""Audio frames (float32 little-endian PCM, 1 to MAX_AUDIO_FRAME_SAMPLES samples) and files."""

import io

import numpy as np
import pytest

from stt.audio import AudioTooLong, UndecodableAudio, decode_file, decode_frame
from stt.errors import SttError

LIMIT = 16384


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
    """decode_file: any format FFmpeg reads, as 16 kHz mono float32."""

    def test_a_flac_in_44_khz_stereo_comes_out_as_the_same_speech_at_16_khz(self, jfk_audio):
        from tests.conftest import JFK_PATH

        audio = decode_file(str(JFK_PATH), max_seconds=60)
        assert audio.dtype == np.float32 and abs(audio.size - jfk_audio.size) < 1600
        assert np.abs(audio).max() <= 1.0

    @pytest.mark.parametrize("codec, container", [("libmp3lame", "mp3"), ("libopus", "ogg"), ("aac", "mp4")])
    def test_compressed_formats_from_a_file_object(self, jfk_audio, codec, container):
        encoded = encode(jfk_audio[:48000], codec, container)
        audio = decode_file(io.BytesIO(encoded), max_seconds=60)
        assert abs(audio.size - 48000) < 3200  # codec padding
        assert np.abs(audio).max() > 0.1

    @pytest.mark.parametrize("content", [b"", b"hello, this is not audio at all\n" * 20, b"RIFF\x00\x00\x00\x00WAVEfmt "])
    def test_what_is_not_audio_is_undecodable(self, content):
        with pytest.raises(UndecodableAudio):
            decode_file(io.BytesIO(content), max_seconds=60)

    def test_decoding_stops_past_the_limit(self, jfk_audio):
        with pytest.raises(AudioTooLong):
            decode_file(io.BytesIO(encode(jfk_audio, "pcm_s16le", "wav")), max_seconds=5)


def encode(audio: np.ndarray, codec: str, container: str) -> bytes:
    """16 kHz mono float32 audio encoded with FFmpeg (through PyAV)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        rate = 48000 if codec == "libopus" else 16000
        stream = output.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()
