"""Model files shipped with streamer (the demo model)."""
