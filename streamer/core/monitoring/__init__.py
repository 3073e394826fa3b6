"""Model health, pure: reference profiles, live drift, and champion/challenger agreement.

- :mod:`~streamer.core.monitoring.profile`: what the inputs and score looked like in training;
- :mod:`~streamer.core.monitoring.drift`: the live window's drift against a profile;
- :mod:`~streamer.core.monitoring.agreement`: how a challenger's scores compare with the champion's.

The topology builds them (:mod:`streamer.topology.monitoring`); the model and
challenger actors feed them; the metrics exposition reads them.
"""

from streamer.core.monitoring.agreement import Agreement, PendingSlots
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.monitoring.profile import Profile

__all__ = ["Agreement", "DriftMonitor", "PendingSlots", "Profile"]
