"""One connection's protocol session (see core.py), split by concern:

- services.py: what a session is given (engine, history, registry, limiters, ...)
- state.py: identity, connection state, transport, errors, figures
- core.py: SttSession: admission, input, ending
- capacity.py: admission by measured capacity (the process's CapacityGate)
- handlers.py: what each client control message does
- delivery.py: the transcriber's results to the client
- limits.py: message rate, audio budget, idle and duration limits
- budget.py: the audio budget per API key
"""

from stt.session.core import SttSession
from stt.session.services import SessionServices
from stt.session.state import CloseCode, CloseFn, SendFn, SpeechEndFn

__all__ = ["CloseCode", "CloseFn", "SendFn", "SessionServices", "SpeechEndFn", "SttSession"]
