"""Repository-wide pytest configuration: hypothesis profiles.

``make test`` selects the ``ci`` profile: no deadline and derandomised, so a
loaded 2-core machine cannot turn a property test flaky.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
