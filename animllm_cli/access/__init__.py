"""Who may use the gateway, and what they used: the keys made for its clients (stored only
as hashes, keys.py) and the durable record of their usage (usage.py). Files only: the
gateway enforces the rules (gateway/clients.py), the `keys` and `usage` commands read and
write these files."""
