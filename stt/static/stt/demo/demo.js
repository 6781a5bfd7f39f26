// Fasttalk demo: the page half. Start opens a WebSocket to /ws/transcribe, starts a
// session and streams the microphone (16 kHz float32 frames from worklet.js); Stop
// sends end_session and waits for session_ended. Protocol: docs/protocol.md.
"use strict";

(() => {
  const SAMPLE_RATE = 16000;
  const FRAME_SAMPLES = 1280; // 80 ms per binary frame
  const SESSION_CONFIG = { language: "en", enable_partial_transcription: true };

  const root = document.getElementById("demo");
  const byId = (id) => document.getElementById(id);
  const ui = {
    start: byId("start"), stop: byId("stop"), status: byId("status"), vad: byId("vad"),
    finals: byId("finals"), partial: byId("partial"), errors: byId("errors"),
    stable: document.querySelector("#partial .stable"), unstable: document.querySelector("#partial .unstable"),
    partialLatency: byId("latency-partial"), finalLatency: byId("latency-final"),
  };
  let session = null; // the session of the last Start

  const setStatus = (text) => { ui.status.textContent = text; };

  function showError(text) {
    const item = document.createElement("li");
    item.textContent = text;
    ui.errors.append(item);
  }

  // The subprotocols to offer: ["fasttalk", "fasttalk.auth.<token>"] with a token
  // minted for this signed-in user, or just ["fasttalk"] when the service runs open.
  async function subprotocols() {
    const response = await fetch(root.dataset.tokenUrl, {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": root.dataset.csrfToken },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `token request failed (HTTP ${response.status})`);
    }
    return body.subprotocols;
  }

  async function start() {
    ui.start.disabled = true;
    ui.errors.replaceChildren();
    if (!window.isSecureContext || !navigator.mediaDevices || !window.AudioWorkletNode) {
      showError("The microphone needs a secure page: open the demo over HTTPS (or on localhost).");
      ui.start.disabled = false;
      return;
    }
    const s = {
      ws: null, audio: new AudioContext(), stream: null, node: null,
      started: false, stopping: false, ended: false,
      samplesSent: 0, sent: [], // [samples sent so far, when] per frame, for the latency figures
      voiced: new Set(), partialOf: null,
    };
    session = s;
    try {
      setStatus("Opening the microphone…");
      // Unprocessed speech suits the recognizer better than call-tuned noise suppression and gain.
      s.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
      await s.audio.audioWorklet.addModule(root.dataset.workletUrl);
      await s.audio.resume();
      setStatus("Connecting…");
      const protocols = await subprotocols();
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      s.ws = new WebSocket(`${scheme}//${location.host}${root.dataset.wsPath}`, protocols);
      s.ws.binaryType = "arraybuffer";
      s.ws.onopen = () => {
        s.ws.send(JSON.stringify({ type: "start_session", session_config: SESSION_CONFIG }));
        setStatus("Starting the session…");
      };
      s.ws.onmessage = (event) => onMessage(s, event);
      s.ws.onclose = (event) => onClose(s, event);

      s.node = new AudioWorkletNode(s.audio, "fasttalk-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { targetRate: SAMPLE_RATE, frameSamples: FRAME_SAMPLES },
      });
      s.node.port.onmessage = (event) => {
        if (event.data === "stopped") endSession(s);
        else sendFrame(s, event.data);
      };
      s.audio.createMediaStreamSource(s.stream).connect(s.node);
      s.node.connect(s.audio.destination); // keeps the graph running; the node outputs silence
      ui.stop.disabled = false;
    } catch (error) {
      showError(error.message || String(error));
      teardown(s);
    }
  }

  function sendFrame(s, frame) {
    // Audio before session_started would be refused; the server's timeline starts there.
    if (!s.started || s.endSent || s.ws.readyState !== WebSocket.OPEN) return;
    s.ws.send(frame); // Float32Array: little-endian on every platform browsers run on
    s.samplesSent += frame.length;
    s.sent.push([s.samplesSent, performance.now()]);
    if (s.sent.length > 1500) s.sent.splice(0, 500); // two minutes are plenty
  }

  // When the audio up to `ms` on the session's timeline went out (or the last frame did).
  function sentAt(s, ms) {
    const sample = (ms * SAMPLE_RATE) / 1000;
    for (const [sentSoFar, when] of s.sent) if (sentSoFar >= sample) return when;
    return s.sent.length ? s.sent[s.sent.length - 1][1] : null;
  }

  function showLatency(element, s, audioEndMs, serverMs) {
    const sent = sentAt(s, audioEndMs);
    const parts = [];
    if (sent !== null) parts.push(`${Math.round(performance.now() - sent)} ms`);
    if (typeof serverMs === "number") parts.push(`server ${Math.round(serverMs)} ms`);
    element.textContent = parts.join(" · ") || "–";
  }

  function showVoice(s) {
    ui.vad.classList.toggle("on", s.voiced.size > 0);
  }

  function onMessage(s, event) {
    if (typeof event.data !== "string") return;
    const message = JSON.parse(event.data);
    const data = message.data || {};
    switch (message.type) {
      case "session_started":
        s.started = true;
        setStatus(`Listening: speak (model ${data.model ? data.model.name : "?"})`);
        break;
      case "voice_activity_detected":
        s.voiced.add(data.utterance_id);
        showVoice(s);
        break;
      case "transcription_partial":
        s.partialOf = data.utterance_id;
        ui.stable.textContent = data.stable_text || "";
        ui.unstable.textContent = data.stable_text ? ` ${data.unstable_text || ""}` : data.text;
        showLatency(ui.partialLatency, s, data.start_ms + data.audio_duration_ms, data.processing_time_ms);
        break;
      case "transcription_final":
        s.voiced.delete(data.utterance_id);
        showVoice(s);
        if (data.text) {
          const line = document.createElement("li");
          line.textContent = data.text.trim();
          ui.finals.append(line);
        }
        if (s.partialOf === data.utterance_id) { // a partial of the next utterance stays
          ui.stable.textContent = ui.unstable.textContent = "";
        }
        showLatency(ui.finalLatency, s, data.end_ms, data.processing_time_ms);
        break;
      case "error":
        showError(`${message.error.code}: ${message.error.message}${message.error.recoverable ? "" : " (session over)"}`);
        break;
      case "session_ended":
        s.ended = true;
        setStatus(`Session ended: ${data.finals} final(s), ${Number(data.audio_received_s).toFixed(1)} s of audio`);
        break;
    }
  }

  function stop() {
    const s = session;
    if (!s || s.stopping) return;
    s.stopping = true;
    ui.stop.disabled = true;
    setStatus("Finishing…");
    s.node.port.postMessage("stop"); // the worklet sends its last frame, then "stopped"
    setTimeout(() => endSession(s), 1000); // in case the audio thread is not running
  }

  function endSession(s) {
    if (s.endSent) return;
    s.endSent = true;
    stopAudio(s);
    if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "end_session" }));
    setTimeout(() => { // session_ended, then the server closes the socket
      if (!s.ended && s.ws) { showError("No session_ended from the server: closing."); s.ws.close(); }
    }, 20000);
  }

  function onClose(s, event) {
    if (!s.ended) {
      showError(s.started
        ? `Connection closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`
        : `The server refused the connection (code ${event.code}): check authentication and ALLOWED_ORIGINS.`);
      setStatus("Disconnected");
    }
    teardown(s);
  }

  function stopAudio(s) {
    if (s.stream) s.stream.getTracks().forEach((track) => track.stop());
    if (!s.audioClosed) {
      s.audioClosed = true;
      s.audio.close().catch(() => {});
    }
  }

  function teardown(s) {
    stopAudio(s);
    s.voiced.clear();
    showVoice(s);
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close();
    if (session === s) {
      ui.start.disabled = false;
      ui.stop.disabled = true;
    }
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
})();
