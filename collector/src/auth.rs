//! Who is talking to the collector.
//!
//! Agents prove their host name with a client certificate (mTLS, the name
//! is the certificate's first DNS subject alternative name, else its common
//! name) or with a per-agent bearer token, which the collector's config
//! stores only as a SHA-256 hash next to the host it belongs to. The
//! [`Authenticator`] turns what arrived with a stream into an [`Identity`];
//! ingest then refuses a `Hello` naming any other host, so an agent can
//! never write series as another host.
//!
//! Write and admin HTTP endpoints (the remote-write receiver, `/-/reload`,
//! anything under `/api/v1/admin/`) take an admin bearer token when one is configured;
//! [`AdminGuard`] checks it, as a layer on single routers
//! ([`require_admin_token`]) and over the whole HTTP app by path
//! ([`guard_admin_paths`]), so a route added later is covered too.
//!
//! Hashes are compared in constant time, and every configured hash is
//! compared, so timing tells nothing about which token was close.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::telemetry::{Counter, Telemetry};

/// A SHA-256 digest.
pub type Sha256Hash = [u8; 32];

/// One `[[agent_tokens]]` entry of the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentTokenEntry {
    /// The host this token proves.
    pub host: String,
    /// SHA-256 of the token, 64 hex digits (`hostpulse-collector hash-token`
    /// prints it).
    pub sha256: String,
}

impl AgentTokenEntry {
    /// Parses the `--agent-token HOST=SHA256` flag.
    pub fn from_flag(text: &str) -> Result<AgentTokenEntry, String> {
        let (host, sha256) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not HOST=SHA256"))?;
        Ok(AgentTokenEntry {
            host: host.to_string(),
            sha256: sha256.to_string(),
        })
    }
}

/// A checked per-agent token: the host and the hash of its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentToken {
    /// The host.
    pub host: String,
    /// SHA-256 of the token.
    pub sha256: Sha256Hash,
}

impl AgentToken {
    /// Checks an entry: a valid host name and a 64-digit hex hash.
    pub fn parse(entry: &AgentTokenEntry) -> Result<AgentToken, String> {
        crate::ingest::validate::check_host(&entry.host)?;
        let sha256 = parse_sha256_hex(&entry.sha256).map_err(|e| format!("token of host {:?}: {e}", entry.host))?;
        Ok(AgentToken {
            host: entry.host.clone(),
            sha256,
        })
    }
}

/// Parses 64 hex digits (either case).
pub fn parse_sha256_hex(text: &str) -> Result<Sha256Hash, String> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "sha256 {text:?} has {} characters, not the 64 hex digits of a SHA-256",
            text.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi * 16 + lo) as u8,
            _ => return Err(format!("sha256 {text:?} is not hexadecimal")),
        }
    }
    Ok(out)
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> Sha256Hash {
    Sha256::digest(token.as_bytes()).into()
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `hostpulse-collector hash-token` prints for a token read on stdin:
/// a config entry to paste (the `host` line only when a host is given).
pub fn hash_token_snippet(text: &str, host: Option<&str>) -> Result<String, String> {
    let token = hostpulse_agent::tls::parse_token(text)?;
    let hash = to_hex(&hash_token(token));
    Ok(match host {
        Some(host) => format!("[[agent_tokens]]\nhost = {host:?}\nsha256 = \"{hash}\"\n"),
        None => format!("sha256 = \"{hash}\"\n"),
    })
}

/// The per-agent tokens, looked up by the token an agent presents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenTable {
    tokens: Vec<AgentToken>,
}

impl TokenTable {
    /// A table; the same hash for two hosts is refused, as it could not say
    /// which host a token proves.
    pub fn new(tokens: Vec<AgentToken>) -> Result<TokenTable, String> {
        for (i, a) in tokens.iter().enumerate() {
            if let Some(b) = tokens[..i].iter().find(|b| b.sha256 == a.sha256) {
                return Err(format!(
                    "hosts {:?} and {:?} have the same token hash; each agent needs its own token",
                    b.host, a.host
                ));
            }
        }
        Ok(TokenTable { tokens })
    }

    /// Whether no tokens are configured (then none is asked for).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The host whose token this is. Every entry is compared, in constant
    /// time, whatever matches.
    pub fn host_for(&self, token: &str) -> Option<&str> {
        let presented = hash_token(token);
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.sha256.ct_eq(&presented)) {
                found = Some(entry.host.as_str());
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme matched
/// without regard to case, as RFC 9110 says).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The host a client certificate names: its first DNS subject alternative
/// name, else its subject's common name.
pub fn certificate_identity(der: &CertificateDer<'_>) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative name extension: {e}"))?;
    let dns = san.and_then(|ext| {
        ext.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
    });
    let name = match dns {
        Some(name) => name,
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .ok_or("the client certificate has neither a DNS name nor a common name")?,
    };
    crate::ingest::validate::check_host(&name).map_err(|e| format!("the client certificate's name: {e}"))?;
    Ok(name)
}

/// Which credential proved an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate signed by the configured client CA.
    ClientCertificate,
    /// A per-agent bearer token.
    Token,
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::ClientCertificate => "client certificate",
            Credential::Token => "token",
        })
    }
}

/// The host an agent proved to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The host name; it becomes the `instance` label.
    pub host: String,
    /// How it was proved.
    pub credential: Credential,
}

/// Why a stream was refused before its first message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// mTLS is required but no certificate arrived.
    #[error("a client certificate signed by the collector's client CA is required")]
    MissingCertificate,
    /// The certificate names no usable host.
    #[error("{0}")]
    BadCertificate(String),
    /// Tokens are required but none arrived.
    #[error("a bearer token is required (metadata `authorization: Bearer <token>`)")]
    MissingToken,
    /// The token is not configured.
    #[error("the bearer token is not one this collector knows")]
    UnknownToken,
    /// Certificate and token name different hosts.
    #[error("the client certificate names host {certificate:?} but the token belongs to host {token:?}")]
    Mismatch {
        /// The certificate's host.
        certificate: String,
        /// The token's host.
        token: String,
    },
}

/// What ingest requires of a stream before it may write.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    require_certificate: bool,
    tokens: TokenTable,
}

impl Authenticator {
    /// Requires a client certificate when `require_certificate`, and a
    /// token when `tokens` is not empty. With neither, streams are trusted
    /// to name their host (plaintext on loopback).
    pub fn new(require_certificate: bool, tokens: TokenTable) -> Self {
        Authenticator {
            require_certificate,
            tokens,
        }
    }

    /// Whether any credential is required.
    pub fn is_required(&self) -> bool {
        self.require_certificate || !self.tokens.is_empty()
    }

    /// The identity proved by the stream's certificate chain (leaf first)
    /// and `authorization` value; `None` when nothing is required. With
    /// both configured, both must be present and name the same host.
    pub fn identify(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
        authorization: Option<&str>,
    ) -> Result<Option<Identity>, AuthError> {
        let from_certificate = if self.require_certificate {
            let leaf = peer_certs
                .and_then(|c| c.first())
                .ok_or(AuthError::MissingCertificate)?;
            Some(certificate_identity(leaf).map_err(AuthError::BadCertificate)?)
        } else {
            None
        };
        let from_token = if self.tokens.is_empty() {
            None
        } else {
            let token = authorization.and_then(bearer_token).ok_or(AuthError::MissingToken)?;
            Some(self.tokens.host_for(token).ok_or(AuthError::UnknownToken)?.to_string())
        };
        Ok(match (from_certificate, from_token) {
            (Some(certificate), Some(token)) if certificate != token => {
                return Err(AuthError::Mismatch { certificate, token });
            }
            (Some(host), _) => Some(Identity {
                host,
                credential: Credential::ClientCertificate,
            }),
            (None, Some(host)) => Some(Identity {
                host,
                credential: Credential::Token,
            }),
            (None, None) => None,
        })
    }
}

/// The message refusing a `Hello` whose host is not the proved identity.
pub fn hello_mismatch_message(claimed: &str, identity: &Identity) -> String {
    format!(
        "Hello claims host {claimed:?} but this agent's {} identifies it as {:?}; an agent can only write its own host's series",
        identity.credential, identity.host
    )
}

/// Why the admin token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a usable token.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Checks the admin bearer token of write and admin HTTP requests. Cheap to
/// clone. Without a configured token every request passes.
#[derive(Clone, Debug)]
pub struct AdminGuard {
    sha256: Option<Sha256Hash>,
    telemetry: Arc<Telemetry>,
}

impl AdminGuard {
    /// A guard for `token` (`None`: no token required).
    pub fn new(token: Option<&str>, telemetry: Arc<Telemetry>) -> Self {
        AdminGuard {
            sha256: token.map(hash_token),
            telemetry,
        }
    }

    /// A guard for the token in `path` (`--admin-token-file`), if any.
    pub fn load(path: Option<&Path>, telemetry: Arc<Telemetry>) -> Result<Self, TokenFileError> {
        let Some(path) = path else {
            return Ok(AdminGuard::new(None, telemetry));
        };
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token = hostpulse_agent::tls::parse_token(&text).map_err(|message| TokenFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(AdminGuard::new(Some(token), telemetry))
    }

    /// Whether a token is required.
    pub fn is_enabled(&self) -> bool {
        self.sha256.is_some()
    }

    /// Whether the request's headers carry the admin token (always true
    /// when none is configured).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.sha256 else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) => bool::from(hash_token(token).ct_eq(expected)),
            None => false,
        }
    }

    fn refuse(&self) -> Response {
        self.telemetry.inc(Counter::HttpUnauthorized);
        let mut response = (
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the admin token: Authorization: Bearer <token>\n",
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hostpulse\""),
        );
        response
    }
}

/// Whether an HTTP path is a write or admin endpoint that needs the admin
/// token: the remote-write receiver, the rule reload (`/-/reload`, as in
/// Prometheus) and everything under `/api/v1/admin/`.
pub fn is_admin_path(path: &str) -> bool {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    under("/api/v1/write") || under("/api/v1/admin") || path == "/-/reload"
}

/// Middleware over the whole HTTP app: requests to [`is_admin_path`] paths
/// need the admin token; others pass untouched.
pub async fn guard_admin_paths(State(guard): State<AdminGuard>, request: Request, next: Next) -> Response {
    if is_admin_path(request.uri().path()) && !guard.allows(request.headers()) {
        return guard.refuse();
    }
    next.run(request).await
}

async fn check_admin_token(State(guard): State<AdminGuard>, request: Request, next: Next) -> Response {
    if !guard.allows(request.headers()) {
        return guard.refuse();
    }
    next.run(request).await
}

/// Requires the admin token on every route of `router` (unmatched paths
/// still answer 404). For routers of write or admin endpoints, e.g.
/// `auth::require_admin_token(remote_write::router(ctx), guard)`.
pub fn require_admin_token<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    guard: AdminGuard,
) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(guard, check_admin_token))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ALPHA_TOKEN: &str = "alpha-secret-0123456789";

    fn table() -> TokenTable {
        TokenTable::new(vec![
            AgentToken {
                host: "alpha".into(),
                sha256: hash_token(ALPHA_TOKEN),
            },
            AgentToken {
                host: "beta".into(),
                sha256: hash_token("beta-secret-0123456789"),
            },
        ])
        .unwrap()
    }

    #[test]
    fn sha256_hex_round_trips_and_errors_name_the_problem() {
        let h = hash_token("abc");
        // The SHA-256 test vector of "abc" (FIPS 180-2).
        assert_eq!(
            to_hex(&h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_sha256_hex(&to_hex(&h).to_uppercase()).unwrap(), h);
        assert!(parse_sha256_hex("abc").unwrap_err().contains("3 characters"));
        assert!(
            parse_sha256_hex(&"g".repeat(64))
                .unwrap_err()
                .contains("not hexadecimal")
        );
        let e = AgentToken::parse(&AgentTokenEntry {
            host: "alpha".into(),
            sha256: "xyz".into(),
        })
        .unwrap_err();
        assert!(e.starts_with("token of host \"alpha\": "), "{e}");
        assert!(
            AgentToken::parse(&AgentTokenEntry {
                host: "a b".into(),
                sha256: to_hex(&h),
            })
            .is_err()
        );
    }

    #[test]
    fn snippet_for_the_config() {
        assert_eq!(
            hash_token_snippet("0123456789abcdef\n", Some("alpha")).unwrap(),
            format!(
                "[[agent_tokens]]\nhost = \"alpha\"\nsha256 = \"{}\"\n",
                to_hex(&hash_token("0123456789abcdef"))
            )
        );
        assert!(hash_token_snippet("", None).is_err());
    }

    #[test]
    fn duplicate_hashes_are_refused() {
        let t = AgentToken {
            host: "a".into(),
            sha256: hash_token("x"),
        };
        let e = TokenTable::new(vec![t.clone(), AgentToken { host: "b".into(), ..t }]).unwrap_err();
        assert!(e.contains("same token hash"), "{e}");
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn tokens_identify_their_host() {
        let auth = Authenticator::new(false, table());
        assert!(auth.is_required());
        let id = auth
            .identify(None, Some(&format!("Bearer {ALPHA_TOKEN}")))
            .unwrap()
            .unwrap();
        assert_eq!(
            id,
            Identity {
                host: "alpha".into(),
                credential: Credential::Token
            }
        );
        assert_eq!(auth.identify(None, None), Err(AuthError::MissingToken));
        assert_eq!(
            auth.identify(None, Some("Bearer wrong-token-0123456789")),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(Authenticator::default().identify(None, None), Ok(None));
        assert!(!Authenticator::default().is_required());
        assert_eq!(
            hello_mismatch_message("beta", &id),
            "Hello claims host \"beta\" but this agent's token identifies it as \"alpha\"; an agent can only write its own host's series"
        );
    }

    #[test]
    fn certificates_are_required_when_configured() {
        let auth = Authenticator::new(true, TokenTable::default());
        assert_eq!(auth.identify(None, None), Err(AuthError::MissingCertificate));
        assert_eq!(auth.identify(Some(&[]), None), Err(AuthError::MissingCertificate));
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(matches!(
            auth.identify(Some(&[junk]), None),
            Err(AuthError::BadCertificate(_))
        ));
    }

    /// A certificate for `sans` with common name `cn`, made with rcgen.
    fn cert(sans: &[&str], cn: Option<&str>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    /// Subject alternative names, common name, and the identity (or a
    /// fragment of the error) expected from them.
    type NameCase<'a> = (&'a [&'a str], Option<&'a str>, Result<&'a str, &'a str>);

    #[test]
    fn certificate_names() {
        let cases: &[NameCase] = &[
            (&["alpha", "alpha.example"], Some("ignored"), Ok("alpha")),
            (&["10.0.0.1", "gamma"], None, Ok("gamma")),
            (&[], Some("delta"), Ok("delta")),
            (&["10.0.0.1"], None, Err("neither a DNS name nor a common name")),
            (&[], Some("has space"), Err("whitespace")),
        ];
        for (sans, cn, expected) in cases {
            let got = certificate_identity(&cert(sans, *cn));
            match expected {
                Ok(host) => assert_eq!(got.as_deref(), Ok(*host), "{sans:?} {cn:?}"),
                Err(needle) => assert!(got.unwrap_err().contains(needle), "{sans:?} {cn:?}"),
            }
        }
        let auth = Authenticator::new(true, table());
        let alpha = cert(&["alpha"], None);
        let both = auth
            .identify(
                Some(std::slice::from_ref(&alpha)),
                Some(&format!("Bearer {ALPHA_TOKEN}")),
            )
            .unwrap()
            .unwrap();
        assert_eq!(both.credential, Credential::ClientCertificate);
        assert_eq!(
            auth.identify(Some(&[alpha]), Some("Bearer beta-secret-0123456789")),
            Err(AuthError::Mismatch {
                certificate: "alpha".into(),
                token: "beta".into()
            })
        );
    }

    #[test]
    fn admin_paths() {
        for (path, guarded) in [
            ("/api/v1/write", true),
            ("/api/v1/write/", true),
            ("/api/v1/admin/backup", true),
            ("/api/v1/writer", false),
            ("/api/v1/query", false),
            ("/api/v1/admin", true),
            ("/api/v1/administrator", false),
            ("/-/reload", true),
            ("/-/healthy", false),
        ] {
            assert_eq!(is_admin_path(path), guarded, "{path}");
        }
        let guard = AdminGuard::new(Some("admin-secret-0123456789"), Arc::new(Telemetry::default()));
        let mut headers = HeaderMap::new();
        assert!(!guard.allows(&headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert!(!guard.allows(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer admin-secret-0123456789"),
        );
        assert!(guard.allows(&headers));
        assert!(AdminGuard::new(None, Arc::new(Telemetry::default())).allows(&HeaderMap::new()));
    }
}
