"""``make gpu-check``: one command that validates a CUDA machine for this project in at most
10 minutes on one GPU (``python -m projects.gpu_check``; docs/INSTALL.md)."""
