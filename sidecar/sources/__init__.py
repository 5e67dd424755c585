"""Where sessions come from: an ordered list of sources behind one seam (``base.SessionSource``)."""
