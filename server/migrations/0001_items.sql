-- The key-value items of /v1/items/{key}.
CREATE TABLE items (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
