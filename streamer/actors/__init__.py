"""Pykka actors: thin shells over the pure functions in ``streamer.core``."""
