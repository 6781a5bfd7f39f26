"""silero-vad through onnxruntime: speech scores high, silence and noise low."""

import sys

import numpy as np

from stt.vad import CHUNK_SAMPLES, SileroVad, silero_model_path


def test_the_model_file_is_found_without_importing_torch():
    assert silero_model_path().name == "silero_vad.onnx"
    SileroVad()
    assert "silero_vad" not in sys.modules


def test_one_probability_per_512_samples_whatever_the_frame_size(jfk_audio):
    vad = SileroVad()
    audio = jfk_audio[:16000]
    probabilities = []
    for start in range(0, audio.size, 700):  # frames that do not align with windows
        probabilities += vad.process(audio[start:start + 700])
    assert len(probabilities) == audio.size // CHUNK_SAMPLES


def test_speech_is_detected_and_silence_is_not(jfk_audio):
    vad = SileroVad()
    silence_scores = vad.process(np.zeros(16000, np.float32))
    speech_scores = vad.process(jfk_audio[16000:48000])  # "my fellow Americans"
    assert max(silence_scores) < 0.1
    assert np.mean(np.array(speech_scores) > 0.5) > 0.5


def test_white_noise_is_not_speech():
    rng = np.random.default_rng(7)
    scores = SileroVad().process((rng.standard_normal(32000) * 0.05).astype(np.float32))
    assert np.mean(np.array(scores) > 0.5) < 0.1


def test_streams_keep_separate_state(jfk_audio):
    speaking, quiet = SileroVad(), SileroVad()
    speaking.process(jfk_audio[16000:32000])
    quiet.process(np.zeros(16000, np.float32))
    after_silence = quiet.process(np.zeros(CHUNK_SAMPLES, np.float32))
    assert after_silence[0] < 0.1
