//! The admin API's bearer token.

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// The token `/metrics` and `/admin/*` require, if any.
#[derive(Clone)]
pub struct Token(Arc<blake3::Hash>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Requires `secret` as `Authorization: Bearer <secret>`.
    pub fn new(secret: &str) -> Self {
        // Only the hash is kept, and `blake3::Hash` compares in constant time: the comparison
        // leaks nothing about how much of a guess was right.
        Self(Arc::new(blake3::hash(secret.as_bytes())))
    }

    /// Whether `headers` carry the token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let Ok(value) = value.to_str() else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && blake3::hash(credentials.trim().as_bytes()) == *self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_is_admitted() {
        let token = Token::new("s3cret");
        let admits = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(AUTHORIZATION, value.parse().unwrap());
            }
            token.admits(&headers)
        };
        assert!(admits(Some("Bearer s3cret")));
        assert!(admits(Some("bearer s3cret")));
        assert!(!admits(None));
        assert!(!admits(Some("Bearer wrong")));
        assert!(!admits(Some("Basic s3cret")));
        assert!(!admits(Some("s3cret")));
        assert!(!admits(Some("Bearer s3cret2")));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
