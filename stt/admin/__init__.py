"""Django admin: runtime profiles for admins; sessions, utterances and errors for analysts.

History is read-only here (it records what happened); staff with the delete
permission may still remove records. Utterance audio is served only through the
admin, to staff who may view utterances.
"""

# Importing the modules registers their admins with the site.
from stt.admin import base, exports, filters, history, keys, profiles, refinements, reports

__all__ = ["base", "exports", "filters", "history", "keys", "profiles", "refinements", "reports"]
