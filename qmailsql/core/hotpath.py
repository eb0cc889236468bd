"""Picks the Cython hot path, or the pure-Python reference behind the same names.

As msgpack does: the compiled module when it imports, qmailsql/core/fallback.py when it
does not or when QMAILSQL_PUREPYTHON is set to anything but "" or "0".
"""
import os

from qmailsql.core.fallback import ConfigError, PRIVILEGED, STALE  # one of each for both

if os.environ.get("QMAILSQL_PUREPYTHON", "") not in ("", "0"):
    from qmailsql.core.fallback import (ResponseCache, cache_times, candidates, decode_frame,
                                   encode_frame, encode_response, parse_sqlserver, split_fields)
    IMPLEMENTATION = "python"
else:
    try:
        from qmailsql.core._hot import (ResponseCache, cache_times, candidates, decode_frame,
                                   encode_frame, encode_response, parse_sqlserver, split_fields)
        IMPLEMENTATION = "cython"
    except ImportError:
        from qmailsql.core.fallback import (ResponseCache, cache_times, candidates, decode_frame,
                                       encode_frame, encode_response, parse_sqlserver,
                                       split_fields)
        IMPLEMENTATION = "python"

__all__ = ["ConfigError", "IMPLEMENTATION", "PRIVILEGED", "STALE", "ResponseCache",
           "cache_times", "candidates", "decode_frame", "encode_frame", "encode_response",
           "parse_sqlserver", "split_fields"]
