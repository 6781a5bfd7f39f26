"""stt/management/commands/serve.py: what `manage.py serve` tells the person who ran it."""

from stt.client.session import DEFAULT_URL
from stt.management.commands.serve import port_in_use_line, ready_banner


def test_the_banner_on_the_default_port_names_the_demo_and_the_plain_command():
    banner = ready_banner("0.0.0.0", 8000, auth_required=False)
    assert "http://127.0.0.1:8000/demo/" in banner
    assert banner.splitlines()[-1].strip() == "from a shell:   .venv/bin/python -m stt.client stream samples/jfk.flac"
    assert DEFAULT_URL == "ws://127.0.0.1:8000/ws/transcribe"


def test_on_another_port_the_command_carries_the_url_and_a_key_when_one_is_needed():
    command = ready_banner("10.0.0.5", 9100, auth_required=True).splitlines()[-1]
    assert "--url ws://10.0.0.5:9100/ws/transcribe" in command and "--api-key YOUR_KEY" in command
    assert command.endswith("samples/jfk.flac")


def test_a_taken_port_is_one_plain_line():
    assert port_in_use_line("0.0.0.0", 8000) == "error: cannot serve on 0.0.0.0:8000: the port is already in use"
