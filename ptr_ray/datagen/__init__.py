"""Dataset construction (PTR's "thought data construction"): Ray Data + weak/strong engines.

``pipeline.run_build`` is the ``ptr-ray build`` stage; ``check.run_check`` is ``ptr-ray
build-check`` (does the strong model beat the weak one?).
"""
