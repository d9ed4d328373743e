"""The influence module's user-facing error."""
from ssl_kd.errors import SSLKDError


class InfluenceError(SSLKDError):
    """An influence computation that cannot give a trustworthy answer (bad inputs, a divergent or
    ill-posed solve); the message says what to change."""
