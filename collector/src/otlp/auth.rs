//! Bearer-token checks shared by both receivers: several tokens accepted at once (so a new one
//! can be rolled out before the old one is removed), compared in constant time, never printed.

use std::sync::Arc;

use axum::http::HeaderValue;
use parking_lot::RwLock;
use subtle::ConstantTimeEq;

/// One accepted bearer token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token (surrounding whitespace removed).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether the token is empty (rejected by validation).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// The tokens in force; replaced in place on reload. Empty: no authentication.
#[derive(Debug, Default)]
pub(crate) struct Tokens(RwLock<Arc<[Token]>>);

impl Tokens {
    pub(crate) fn new(tokens: &[Token]) -> Self {
        Self(RwLock::new(tokens.into()))
    }

    pub(crate) fn set(&self, tokens: &[Token]) {
        *self.0.write() = tokens.into();
    }

    /// Whether a request with this `Authorization` header may pass.
    pub(crate) fn allows(&self, header: Option<&HeaderValue>) -> bool {
        let tokens = self.0.read().clone();
        if tokens.is_empty() {
            return true;
        }
        let Some(presented) = header.and_then(|h| bearer_credentials(h.as_bytes())) else {
            return false;
        };
        matches(&tokens, presented)
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1): shared
/// by the receivers and the agent's HTTP surface, so every listener reads the header alike.
pub fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Compares with every accepted token in constant time (per token), without early exit.
fn matches(tokens: &[Token], presented: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for t in tokens {
        ok |= t.as_bytes().ct_eq(presented);
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tokens_any_case_scheme_and_no_leak() {
        let tokens = Tokens::new(&[Token::new("old-token"), Token::new("new-token\n")]);
        let h = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(tokens.allows(Some(&h("Bearer old-token"))));
        assert!(tokens.allows(Some(&h("bearer new-token"))));
        assert!(!tokens.allows(Some(&h("Bearer new-toke"))));
        assert!(!tokens.allows(Some(&h("Basic bmV3LXRva2Vu"))));
        assert!(!tokens.allows(Some(&h("Bearer"))));
        assert!(!tokens.allows(None));
        assert!(!format!("{tokens:?}").contains("token\""));
        assert!(!format!("{:?}", Token::new("s3cret")).contains("s3cret"));
        tokens.set(&[]);
        assert!(tokens.allows(None), "no tokens: open");
    }
}
