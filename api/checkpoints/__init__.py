"""Checkpoint listing and downloads."""
