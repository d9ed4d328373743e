"""The command-line tools. Run from the repository as `python tools/<name>.py`; installed as
`ssl_kd.tools`, where `ssl-kd <command>` (ssl_kd/__main__.py) reaches their `main` functions."""
