-- API tokens for writes. Only the SHA-256 of a token is kept: a copy of the
-- database does not give its reader the tokens.
CREATE TABLE api_tokens (
    id bigserial PRIMARY KEY,
    sha256 text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
