"""Uploads: datasets (CSV, NPZ, a zip of an image folder) and backbone weights (safetensors
or a PyTorch state dict), owned like jobs."""
