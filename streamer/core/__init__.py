"""Pure code with no pykka or kafka imports: the unit tests drive it directly."""
