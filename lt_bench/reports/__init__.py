"""Run records, provenance and benchmark tables."""
