"""The OpenAI-compatible file API (docs/protocol.md, *OpenAI-compatible HTTP API*).

  POST /v1/audio/transcriptions   a file in any FFmpeg format -> json, text, srt, vtt,
                                  verbose_json, or a stream of transcript.text.* events
  GET  /v1/models[/{id}]          the loaded model and the names it answers to

The same engine as the WebSocket sessions: a file is cut at pauses into short jobs of
kind FILE that queue below every live stream's work, so uploads never delay live
partials and finals for long.

  requests.py     the form's fields, checked (OpenAI's parameters as honoured here)
  catalog.py      model names and aliases
  chunks.py       cutting audio at pauses (silero-vad on the search regions only)
  transcriber.py  chunks through the engine, one at a time, and into the history
  formats.py      json, text, srt, vtt, verbose_json; segments from word times
  views.py        the async views, authentication, errors in OpenAI's shape, SSE
  services.py     what the views are given; urls.py their routes
"""
