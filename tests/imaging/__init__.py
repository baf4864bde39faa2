"""Tests of the image check (shardtools.imaging)."""
