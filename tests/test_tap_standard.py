"""The singer-sdk standard tap tests, against a seeded 7.3 sandbox.

The SDK builds the test class while pytest collects this module, so the sandbox starts at import
time and stops when the interpreter exits.
"""

from __future__ import annotations

import atexit

from singer_sdk.testing import SuiteConfig, get_tap_test_class

from edfi_sandbox.server import Sandbox
from tap_edfi.streams import stream_name
from tap_edfi.tap import TapEdFi
from tests.tap_support import tap_config

SANDBOX = Sandbox("7.3", seed=30).start()
atexit.register(SANDBOX.stop)

_EMPTY = sorted(
    {stream_name(res) for res in SANDBOX.model if next(SANDBOX.store.iter_docs(res.path), None) is None}
    | {stream_name(res, "keyChanges") for res in SANDBOX.model}
)

TestTapEdFi = get_tap_test_class(
    tap_class=TapEdFi,
    config=tap_config(SANDBOX, page_size=100, max_workers=4),
    suite_config=SuiteConfig(max_records_limit=50, ignore_no_records_for_streams=_EMPTY),
)
