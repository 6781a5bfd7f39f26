"""The protocol's models, defined by direction: common.py (what both share), client_messages.py
(client → server), server_messages.py (server → client). Import them from stt.messages, the
one public surface (it also parses server frames); these modules are how it is laid out."""
