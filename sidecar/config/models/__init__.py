"""One model per config section (``listen.py``: listen and forward_auth, ``store.py``: redis and cache, ...), and
``root.py``: the whole :class:`Config`. A new section is a new module here plus one field of ``Config``."""
