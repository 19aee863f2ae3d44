-- Per-proxy compile failures a node reported with its last ACK (a JSON array; NULL: none),
-- and whether the node has an in-process sentence encoder (NULL: the node did not say).
ALTER TABLE nodes ADD COLUMN proxy_failures TEXT;
ALTER TABLE nodes ADD COLUMN has_encoder INTEGER;
