"""Picks the Cython hot path, or the pure-Python reference behind the same names.

As msgpack does: the compiled module when it imports, qmailsql/core/fallback.py when it
does not or when QMAILSQL_PUREPYTHON is set to anything but "" or "0". What the two
share (ConfigError, the control/sqlserver keys, the cache's shares, answer kinds and
dispatch actions) lives in qmailsql/core/definitions.py.
"""
import os

from qmailsql.core.definitions import (  # one of each for both builds
    CACHED, FRESH, HIT, INLINE, NEGATIVE, NEVER, PRIVILEGED, REFUSED, STALE, STALE_NOW, WORK,
    ConfigError)

# The imports below are conditional, not late: the compiled module is optional (a
# pure-Python build, or QMAILSQL_PUREPYTHON) and the reference stands in for it.
if os.environ.get("QMAILSQL_PUREPYTHON", "") not in ("", "0"):
    from qmailsql.core.fallback import (MALFORMED, Dispatcher, ResponseCache, cache_times,
                                        candidates, decode_frame, encode_frame,
                                        encode_response, local_cache_key, parse_sqlserver,
                                        split_fields)
    IMPLEMENTATION = "python"
else:
    try:
        from qmailsql.core._hot import (MALFORMED, Dispatcher, ResponseCache, cache_times,
                                        candidates, decode_frame, encode_frame,
                                        encode_response, local_cache_key, parse_sqlserver,
                                        split_fields)
        IMPLEMENTATION = "cython"
    except ImportError:  # optional: not built here; the reference stands in
        from qmailsql.core.fallback import (MALFORMED, Dispatcher, ResponseCache, cache_times,
                                            candidates, decode_frame, encode_frame,
                                            encode_response, local_cache_key,
                                            parse_sqlserver, split_fields)
        IMPLEMENTATION = "python"

__all__ = ["CACHED", "FRESH", "HIT", "INLINE", "NEGATIVE", "NEVER", "PRIVILEGED", "REFUSED",
           "STALE", "STALE_NOW", "WORK", "ConfigError", "IMPLEMENTATION", "MALFORMED",
           "Dispatcher", "ResponseCache", "cache_times", "candidates", "decode_frame",
           "encode_frame", "encode_response", "local_cache_key", "parse_sqlserver",
           "split_fields"]
