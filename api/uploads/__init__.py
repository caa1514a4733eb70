"""Uploads: datasets (.npz or .csv) and weights (.safetensors), owned like jobs."""
