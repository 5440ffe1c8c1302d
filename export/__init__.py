"""Export (needs the train extra)."""
