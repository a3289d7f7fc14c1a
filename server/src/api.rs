//! `/v1/items/{key}`: JSON values by key, in PostgreSQL. Reads are open;
//! writes need `Authorization: Bearer <token>`, checked against the
//! SHA-256 of the tokens that `server bootstrap` creates.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Response, StatusCode};
use tokio_postgres::Client;

use crate::db::{sha256_hex, Db};
use crate::serve::{text, with_type};

pub const PREFIX: &str = "/v1/items/";

pub async fn handle(
    db: &Db,
    method: &Method,
    key: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Full<Bytes>> {
    if !valid_key(key) {
        return text(
            StatusCode::BAD_REQUEST,
            "invalid key: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        );
    }
    if ![Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(method) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD, PUT, DELETE"));
        return response;
    }
    let Some(client) = db.client() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
    };
    let result = match *method {
        Method::PUT | Method::DELETE => match authorized(&client, headers).await {
            Ok(true) => match db.writes_refused() {
                Some(reason) => Ok(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("writes stopped: {reason}"),
                )),
                None if *method == Method::PUT => put(&client, key, &body).await,
                None => delete(&client, key).await,
            },
            Ok(false) => Ok(unauthorized()),
            Err(err) => Err(err),
        },
        _ => get(&client, key).await,
    };
    result.unwrap_or_else(|err| {
        crate::logging::log(
            crate::logging::Level::Error,
            "database error",
            &[("error", serde_json::json!(err.to_string()))],
        );
        text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    })
}

fn valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn authorized(client: &Client, headers: &HeaderMap) -> Result<bool, tokio_postgres::Error> {
    let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Ok(false);
    };
    let rows = client
        .query(
            "SELECT 1 FROM api_tokens WHERE sha256 = $1",
            &[&sha256_hex(token.as_bytes())],
        )
        .await?;
    Ok(!rows.is_empty())
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "writes need Authorization: Bearer TOKEN; create the first token with `server bootstrap`",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn put(
    client: &Client,
    key: &str,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, tokio_postgres::Error> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {err}"),
            ))
        }
    };
    if holds_nul(&value) {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "the body holds \\u0000 (NUL) in a string, which the database cannot store; remove it or encode the value, as base64 for example",
        ));
    }
    let row = client
        .query_one(
            "INSERT INTO items (key, value) VALUES ($1, ($2::text)::jsonb)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
             RETURNING (xmax = 0)",
            &[&key, &value.to_string()],
        )
        .await?;
    let created: bool = row.get(0);
    Ok(if created {
        text(StatusCode::CREATED, "created")
    } else {
        text(StatusCode::OK, "updated")
    })
}

/// Whether a string or key of `value` holds U+0000: valid JSON, but
/// PostgreSQL's jsonb refuses it, and the refusal is the client's to fix.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, field)| key.contains('\0') || holds_nul(field)),
        _ => false,
    }
}

async fn get(client: &Client, key: &str) -> Result<Response<Full<Bytes>>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT value::text FROM items WHERE key = $1", &[&key])
        .await?;
    Ok(match rows.first() {
        Some(row) => with_type(
            StatusCode::OK,
            format!("{}\n", row.get::<_, String>(0)),
            "application/json",
        ),
        None => text(StatusCode::NOT_FOUND, "not found"),
    })
}

async fn delete(
    client: &Client,
    key: &str,
) -> Result<Response<Full<Bytes>>, tokio_postgres::Error> {
    let deleted = client
        .execute("DELETE FROM items WHERE key = $1", &[&key])
        .await?;
    Ok(if deleted == 0 {
        text(StatusCode::NOT_FOUND, "not found")
    } else {
        text(StatusCode::OK, "deleted")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(valid_key("a"));
        assert!(valid_key("user-1.profile_v2"));
        assert!(valid_key(&"k".repeat(128)));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(129)));
        assert!(!valid_key("a/b"));
        assert!(!valid_key("a b"));
    }

    #[test]
    fn nul_anywhere_in_a_string_or_key() {
        let nul = |text: &str| holds_nul(&serde_json::from_str(text).unwrap());
        assert!(nul(r#""\u0000""#));
        assert!(nul(r#"{"a": [1, {"b": "x\u0000"}]}"#));
        assert!(nul(r#"{"\u0000": null}"#));
        assert!(!nul(r#"{"a": ["\u0001", 0, true]}"#));
    }
}
