"""The streaming speech-to-text app: WebSocket protocol, sessions, streaming, engine."""
