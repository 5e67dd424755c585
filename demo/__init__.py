"""`make run`: the local demo stack (development only, not shipped in the wheel)."""
