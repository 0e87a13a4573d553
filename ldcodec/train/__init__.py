"""Training of the ldcodec models (``ldcodec train``)."""
