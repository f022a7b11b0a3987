"""The CKKS variant's FLARE components (as FLARE's `nvflare.app_opt.he`): the site filters (filters.py), the
server's ciphertext aggregator (aggregator.py), and loading the contexts from a participant's kit (context.py). The
protocol itself, without FLARE, is `fedrsclip.he`. Importing this package does not import TenSEAL."""
