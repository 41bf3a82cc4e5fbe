"""A stand-in for ComfyUI's `comfy` package: just the calls nodes/host.py makes, recorded for tests."""
