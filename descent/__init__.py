"""Descent: hosted PyTorch training jobs. Settings and the command line live here."""
