"""The service's parts the monitoring endpoints report on (the project wires stt into
monitoring; neither imports the other's way)."""

from __future__ import annotations

import functools

from fasttalk.celery import app as celery_app
from monitoring.sources import ServiceSources
from stt import protocol
from stt.auth import api_key_of_request, look_up_off_loop
from stt.engine import DecodeOptions, get_engine
from stt.persistence import history
from stt.services import process_capacity_gate


@functools.cache
def service_sources() -> ServiceSources:
    return ServiceSources(engine=get_engine, history=history, celery_app=celery_app,
                          probe_options=DecodeOptions.partial("en"),
                          protocol_version=protocol.PROTOCOL_VERSION, sample_rate=protocol.SAMPLE_RATE,
                          api_key_of=functools.partial(look_up_off_loop, api_key_of_request),
                          capacity=lambda: process_capacity_gate().verdict().as_dict())
