"""Suite-wide test settings: hypothesis profiles, quiet third-party loggers, shared fixtures."""

from __future__ import annotations

import logging
import os

from hypothesis import HealthCheck, settings

# The mDNS fixtures (loopback_multicast, advertiser) for every test that needs them.
pytest_plugins = ["tests.mdns"]

# `dev` for quick local runs, `ci` (the default) for the full suite: no deadlines, since a
# loaded 2-core CI machine makes per-example timings meaningless.
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", deadline=None, max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# transitions warns about every convenience method it does not bind on models declared with
# model_override=True; that is by design and would drown the logs of a failing test.
logging.getLogger("transitions.core").setLevel(logging.ERROR)
