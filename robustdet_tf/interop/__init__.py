"""Adapters that let other tools attack or evaluate our detectors (ART: ``interop/art.py``)."""
