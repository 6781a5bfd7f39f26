"""The OpenAI-compatible file API through a real server process (Daphne, PostgreSQL,
AUTH_REQUIRED, the bundled model), driven by the official `openai` client: every
response format, the streamed variant, and each bad input in OpenAI's error shape."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile

from stt.evaluation import word_error_rate
from tests.conftest import AUDIO_DIR, JFK_PATH, JFK_TEXT, load_audio

SAMPLE_RATE = 16000
# The talk of several recordings, 1.2 s apart: longer than one chunk, with references.
PARTS = ("fw_libri_61_left.wav", "ps_austen_0870.wav", "pv_platforms.wav", "ps_goforward.wav",
         "fw_libri_61_left.wav")


@pytest.fixture(scope="module")
def client(stt_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stt_server.base}/v1", api_key=stt_server.keys["backend"], max_retries=0,
                         timeout=300)


@pytest.fixture(scope="module")
def several(tmp_path_factory) -> tuple[Path, str, list[float]]:
    """A WAV of several recordings (~30 s), its reference text and where each one starts."""
    pieces, starts, texts, at = [], [], [], 0.0
    for index, name in enumerate(PARTS):
        audio = load_audio(AUDIO_DIR / name) * (1.0 if index < 4 else 0.8)  # the repeat is another recording's bytes
        starts.append(at)
        pieces += [audio, np.zeros(int(1.2 * SAMPLE_RATE), np.float32)]
        at += audio.size / SAMPLE_RATE + 1.2
        texts.append((AUDIO_DIR / name).with_suffix(".txt").read_text().strip())
    path = tmp_path_factory.mktemp("several") / "several.wav"
    soundfile.write(path, np.concatenate(pieces), SAMPLE_RATE, subtype="PCM_16")
    return path, " ".join(texts), starts


def cues(body: str, separator: str) -> list[tuple[float, float, str]]:
    pattern = rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d) --> (\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)\n(.+)"
    found = []
    for match in re.finditer(pattern, body):
        h1, m1, s1, ms1, h2, m2, s2, ms2, text = match.groups()
        found.append((int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000,
                      int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000, text))
    return found


class TestResponseFormats:
    def test_json_is_the_sentence(self, client):
        result = client.audio.transcriptions.create(file=JFK_PATH, model="whisper-1")
        assert word_error_rate(JFK_TEXT, result.text) <= 0.1
        assert result.usage.type == "duration" and result.usage.seconds == 11

    def test_text_is_the_sentence_as_plain_text(self, client):
        result = client.audio.transcriptions.create(file=JFK_PATH, model="tiny.en", response_format="text")
        assert isinstance(result, str) and word_error_rate(JFK_TEXT, result) <= 0.1

    @pytest.mark.parametrize("response_format, separator", [("srt", ","), ("vtt", ".")])
    def test_subtitles_follow_the_speech_in_order(self, client, response_format, separator):
        body = client.audio.transcriptions.create(file=JFK_PATH, model="whisper-1", response_format=response_format)
        found = cues(body, separator)
        assert len(found) >= 2
        assert word_error_rate(JFK_TEXT, " ".join(text for _, _, text in found)) <= 0.1
        assert found[0][0] < 1.0 and 10.0 < found[-1][1] <= 11.1
        assert all(start < end for start, end, _ in found)
        assert all(a[1] <= b[0] for a, b in zip(found, found[1:])), "cues do not overlap"
        if response_format == "srt":
            assert body.startswith("1\n")
        else:
            assert body.startswith("WEBVTT\n\n")

    def test_verbose_json_has_words_and_segments_on_the_files_timeline(self, client, several):
        path, reference, starts = several
        result = client.audio.transcriptions.create(file=path, model="whisper-1", response_format="verbose_json",
                                                    timestamp_granularities=["word", "segment"])
        assert word_error_rate(reference, result.text) <= 0.25
        assert result.language == "en" and abs(result.duration - (starts[-1] + 5.0 + 1.2)) < 0.1
        words = result.words
        assert abs(len(words) - len(reference.split())) <= 6
        assert all(a.start <= b.start for a, b in zip(words, words[1:])) and words[-1].end <= result.duration
        # Each recording's first word comes right after the pause before it, whichever chunk holds it.
        for start, first in zip(starts[1:], ("and", "today", "go", "he")):
            spoken = [w for w in words if abs(w.start - start) < 1.0]
            assert spoken and spoken[0].word.lower().strip(",.") == first, (start, spoken)
        segments = result.segments
        assert [s.id for s in segments] == list(range(len(segments)))
        assert all(s.start < s.end for s in segments) and segments[-1].end <= result.duration
        assert word_error_rate(reference, " ".join(s.text for s in segments)) <= 0.25

    def test_verbose_json_gives_segments_by_default(self, client):
        result = client.audio.transcriptions.create(file=JFK_PATH, model="whisper-1", response_format="verbose_json")
        assert result.segments and result.words is None

    def test_any_format_ffmpeg_reads(self, client, jfk_audio):
        from tests.stt.test_audio import encode

        mp3 = encode(jfk_audio, "libmp3lame", "mp3")
        result = client.audio.transcriptions.create(file=("speech.mp3", mp3, "audio/mpeg"), model="whisper-1")
        assert word_error_rate(JFK_TEXT, result.text) <= 0.1

    def test_a_prompt_steers_the_spelling(self, client, speak):
        buffer = io.BytesIO()
        soundfile.write(buffer, speak("Please send the invoice to Siobhan Nakamura today."), SAMPLE_RATE, format="WAV")
        file = ("invoice.wav", buffer.getvalue(), "audio/wav")
        plain = client.audio.transcriptions.create(file=file, model="whisper-1")
        steered = client.audio.transcriptions.create(file=file, model="whisper-1", prompt="Siobhan Nakamura")
        assert "Siobhan" not in plain.text and "Siobhan Nakamura" in steered.text

    def test_a_temperature_still_transcribes(self, client):
        result = client.audio.transcriptions.create(file=JFK_PATH, model="whisper-1", temperature=0.4)
        assert word_error_rate(JFK_TEXT, result.text) <= 0.3


class TestStreaming:
    def test_deltas_then_the_whole_text(self, client, several):
        path, reference, _ = several
        events = list(client.audio.transcriptions.create(file=path, model="whisper-1", stream=True))
        kinds = [event.type for event in events]
        assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
        assert len(kinds) >= 3, "a delta per chunk of a file longer than one chunk"
        done = events[-1]
        assert "".join(event.delta for event in events[:-1]) == done.text
        assert word_error_rate(reference, done.text) <= 0.25


class TestModels:
    def test_the_loaded_model_and_its_aliases_are_listed(self, client):
        ids = [model.id for model in client.models.list()]
        assert ids[0] == "tiny.en" and "whisper-1" in ids
        assert client.models.retrieve("whisper-1").owned_by == "fasttalk"

    def test_pipecats_default_name_is_listed_and_transcribes(self, client):
        """Issue 26 #1: Pipecat's OpenAISTTService asks for gpt-transcribe (400 before)."""
        assert {"gpt-transcribe", "gpt-realtime-whisper"} <= {model.id for model in client.models.list()}
        result = client.audio.transcriptions.create(file=JFK_PATH, model="gpt-transcribe")
        assert word_error_rate(JFK_TEXT, result.text) <= 0.1

    def test_an_unknown_model_is_not_found(self, client):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("whisper-9")


def error_of(raised: pytest.ExceptionInfo) -> dict:
    body = raised.value.body
    assert set(body) == {"message", "type", "param", "code"}, body  # the client hands over body["error"]
    return body


class TestBadInput:
    def test_what_is_not_audio_is_a_bad_request(self, client):
        with pytest.raises(openai.BadRequestError) as raised:
            client.audio.transcriptions.create(file=("notes.wav", b"this is not audio\n" * 100, "audio/wav"),
                                               model="whisper-1")
        assert error_of(raised)["param"] == "file" and error_of(raised)["code"] == "invalid_audio"

    def test_no_file_is_a_bad_request(self, stt_server):
        status, body = post_form(stt_server, {"model": "whisper-1"}, key=stt_server.keys["backend"])
        assert status == 400 and body["error"]["param"] == "file"
        assert body["error"]["type"] == "invalid_request_error"

    def test_an_unknown_response_format_is_a_bad_request(self, client):
        with pytest.raises(openai.BadRequestError) as raised:
            client.audio.transcriptions.create(file=JFK_PATH, model="whisper-1", response_format="xml")
        assert error_of(raised)["param"] == "response_format"

    @pytest.mark.parametrize("fields, param", [({"model": "whisper-7"}, "model"), ({"language": "fr"}, "language"),
                                               ({"temperature": 3}, "temperature")])
    def test_other_bad_fields_are_named(self, client, fields, param):
        arguments = {"file": JFK_PATH, "model": "whisper-1", **fields}
        with pytest.raises(openai.BadRequestError) as raised:
            client.audio.transcriptions.create(**arguments)
        assert error_of(raised)["param"] == param

    def test_a_bad_key_or_none_is_refused(self, stt_server):
        bad = openai.OpenAI(base_url=f"{stt_server.base}/v1", api_key="ftk_not-a-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as raised:
            bad.audio.transcriptions.create(file=JFK_PATH, model="whisper-1")
        assert error_of(raised)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        status, body = post_form(stt_server, {"model": "whisper-1"}, key=None)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"

    def test_a_file_over_the_limit_is_refused_with_413_and_the_server_goes_on(self, client):
        oversized = np.random.default_rng(0).integers(0, 256, 25 * 1024 * 1024 + 1, dtype=np.uint8).tobytes()
        with pytest.raises(openai.APIStatusError) as raised:
            client.audio.transcriptions.create(file=("big.wav", oversized, "audio/wav"), model="whisper-1")
        assert raised.value.status_code == 413 and error_of(raised)["code"] == "file_too_large"
        assert word_error_rate(JFK_TEXT, client.audio.transcriptions.create(file=JFK_PATH, model="whisper-1").text) <= 0.1


    def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit_too(self, stt_server):
        import http.client
        from urllib.parse import urlsplit

        piece = b"\0" * (1024 * 1024)
        parts = urlsplit(stt_server.base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        connection.request("POST", "/v1/audio/transcriptions", body=(piece for _ in range(26)), encode_chunked=True,
                           headers={"Authorization": f"Bearer {stt_server.keys['backend']}",
                                    "Content-Type": "multipart/form-data; boundary=x"})
        response = connection.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]["code"] == "file_too_large"
        connection.close()


    def test_a_chunked_body_within_the_limit_is_read_like_one_with_a_length(self, stt_server):
        import http.client
        from urllib.parse import urlsplit

        boundary = "fasttalk-chunked"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"jfk.flac\"\r\n"
                f"Content-Type: audio/flac\r\n\r\n").encode() + JFK_PATH.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        parts = urlsplit(stt_server.base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        connection.request("POST", "/v1/audio/transcriptions", encode_chunked=True,
                           body=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                           headers={"Authorization": f"Bearer {stt_server.keys['backend']}",
                                    "Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == 200, answer
        assert word_error_rate(JFK_TEXT, answer["text"]) <= 0.1

    @pytest.mark.parametrize("name", ["list.m3u8", "speech.mp3"])
    def test_a_playlist_naming_a_file_of_the_server_is_refused(self, client, name):
        playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:11.0,\n{JFK_PATH}\n#EXT-X-ENDLIST\n").encode()
        for size in (len(playlist), 3 * 1024 * 1024):  # in memory, and spooled to a temporary file
            content = playlist + b"#" * (size - len(playlist))
            with pytest.raises(openai.BadRequestError) as raised:
                client.audio.transcriptions.create(file=(name, content, "audio/mpeg"), model="whisper-1")
            assert (error_of(raised)["code"], error_of(raised)["param"]) == ("invalid_audio", "file")


class TestHistory:
    def test_each_file_is_a_session_of_source_file_with_its_chunks_as_utterances(self, stt_server, client, several):
        path, reference, _ = several
        before = time.time()
        text = client.audio.transcriptions.create(file=path, model="gpt-4o-transcribe", response_format="text")
        deadline, rows = time.time() + 10, []
        while time.time() < deadline:
            rows = stt_server.database.query(
                "select connection_id, close_reason, finals, config from stt_sessionrecord where source = 'file' "
                "and started_at >= to_timestamp(%s) order by started_at desc limit 1", before - 1)
            if rows and rows[0][1]:
                break
            time.sleep(0.2)
        connection_id, close_reason, finals, config = rows[0]
        assert close_reason == "completed" and finals >= 2 and config["model"] == "gpt-4o-transcribe"
        stored = stt_server.database.query(
            "select text, start_ms, reason from stt_utterance where session_id = %s order by start_ms", connection_id)
        assert len(stored) == finals and {row[2] for row in stored} == {"file_chunk"}
        assert " ".join(row[0] for row in stored) == text.strip()


    def test_a_client_that_leaves_stops_the_work_and_the_session_says_so(self, stt_server, tmp_path):
        # Eight minutes of the talk: more than a quiet machine transcribes before the client gives up.
        talk = load_audio(AUDIO_DIR / "long_gates_ted.wav")
        long_file = tmp_path / "talk-8-minutes.flac"
        soundfile.write(long_file, np.tile(talk, 4), 16000, format="FLAC")
        impatient = openai.OpenAI(base_url=f"{stt_server.base}/v1", api_key=stt_server.keys["backend"],
                                  max_retries=0, timeout=4)
        before = time.time()
        with pytest.raises(openai.APITimeoutError):
            impatient.audio.transcriptions.create(file=long_file, model="whisper-1")
        deadline, rows = time.time() + 15, []
        while time.time() < deadline and not rows:
            rows = stt_server.database.query(
                "select audio_received_s, audio_transcribed_s from stt_sessionrecord where source = 'file' "
                "and close_reason = 'client_disconnected' and started_at >= to_timestamp(%s)", before - 1)
            time.sleep(0.2)
        assert rows, "the session ended as the client left"
        received, transcribed = rows[0]
        assert received > 480 and transcribed < received / 2, "the rest of the talk was not decoded"


def post_form(server, fields: dict[str, str], key: str | None) -> tuple[int, dict]:
    """A multipart POST without a file (the openai client always sends one)."""
    boundary = uuid.uuid4().hex
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                   for name, value in fields.items()) + f"--{boundary}--\r\n"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{server.base}/v1/audio/transcriptions", data=body.encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
