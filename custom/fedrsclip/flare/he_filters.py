"""Old path of the CKKS site filters, named by jobs made before 0.2; use fedrsclip.flare.he.filters."""

from .he.filters import CKKSDecryptor, CKKSEncryptor  # noqa: F401
