"""A self-signed certificate for TLS tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(folder: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """``(cert.pem, key.pem)``: a one-day certificate for 127.0.0.1 that is its own CA."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    argv = [
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name}"),
        *("-addext", "subjectAltName=IP:127.0.0.1"),
    ]
    subprocess.run(argv, check=True, capture_output=True)
    return cert, key
