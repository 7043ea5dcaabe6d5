//! The agent's credentials towards the collector: the TLS configuration of
//! the gRPC channel (CA to trust, optional client certificate for mTLS) and
//! the per-agent bearer token. `client.rs` calls [`client_tls`] when it
//! builds an `Endpoint` and attaches [`load_token`]'s value to every
//! stream's `authorization` metadata.
//!
//! Files are read here and checked at once, so a wrong path or a file that
//! is not PEM fails at start with the file's name rather than as a vague
//! handshake error on every reconnect. [`parse_token`] is the pure part and
//! is shared with the collector, which reads its admin token the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsSettings;

/// Deadline for the TLS handshake with the collector.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shortest accepted token: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why the agent's credentials could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's contents are unusable.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The collector URL does not fit the TLS settings.
    #[error("collector URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// The TLS configuration for a channel to `collector_url`: `None` for
/// `http://` (plaintext, only sensible on loopback), `Some` for `https://`,
/// trusting `settings.ca` (or the system's roots when it is unset) and
/// presenting `settings.cert`/`settings.key` when both are set.
pub fn client_tls(settings: &TlsSettings, collector_url: &str) -> Result<Option<ClientTlsConfig>, TlsError> {
    let url_error = |message: &str| TlsError::Url {
        url: collector_url.to_string(),
        message: message.to_string(),
    };
    let scheme = collector_url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http") => {
            if settings.ca.is_some() || settings.cert.is_some() || settings.key.is_some() {
                return Err(url_error(
                    "TLS files are configured but the URL is http://; use https:// to connect with TLS",
                ));
            }
            return Ok(None);
        }
        Some("https") => {}
        _ => return Err(url_error("must start with http:// or https://")),
    }
    if settings.cert.is_some() != settings.key.is_some() {
        return Err(url_error("a client certificate needs both tls_cert and tls_key"));
    }
    let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
    config = match &settings.ca {
        Some(ca) => {
            let pem = read(ca)?;
            check_certificates(ca, &pem)?;
            config.ca_certificate(Certificate::from_pem(pem))
        }
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
        let cert_pem = read(cert)?;
        check_certificates(cert, &cert_pem)?;
        let key_pem = read(key)?;
        check_private_key(key, &key_pem)?;
        config = config.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(Some(config))
}

/// The `authorization` metadata value (`Bearer <token>`) from
/// `settings.token_file`, or `None` when no token file is configured.
pub fn load_token(settings: &TlsSettings) -> Result<Option<MetadataValue<Ascii>>, TlsError> {
    let Some(path) = &settings.token_file else {
        return Ok(None);
    };
    let bytes = read(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid(path, "is not UTF-8 text".into()))?;
    let token = parse_token(text).map_err(|message| invalid(path, message))?;
    let value = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| invalid(path, "the token cannot be sent as a header value".into()))?;
    Ok(Some(value))
}

/// The token in a token file's text: the whole text without surrounding
/// whitespace (so a trailing newline does not matter), at least
/// [`MIN_TOKEN_LEN`] characters of visible ASCII, as it travels in an HTTP
/// header.
pub fn parse_token(text: &str) -> Result<&str, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("holds no token".into());
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the token contains {c:?}; only visible ASCII characters without spaces are allowed"
        ));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token has {} characters, fewer than {MIN_TOKEN_LEN} (make one with `openssl rand -hex 32`)",
            token.len()
        ));
    }
    Ok(token)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, message: String) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

fn check_certificates(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid(
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(())
}

fn check_private_key(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|e| {
        invalid(
            path,
            match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_string()
                }
                e => format!("not a PEM private key file: {e}"),
            },
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(parse_token("0123456789abcdef\n"), Ok("0123456789abcdef"));
        assert_eq!(parse_token("  0123456789abcdef  \r\n"), Ok("0123456789abcdef"));
        assert_eq!(parse_token("\n"), Err("holds no token".into()));
        assert!(parse_token("short").unwrap_err().contains("fewer than 16"));
        assert!(parse_token("0123456789 abcdef").unwrap_err().contains("' '"));
        assert!(parse_token("0123456789abcdéf").unwrap_err().contains("'é'"));
    }

    #[test]
    fn urls_and_files() {
        let none = TlsSettings::default();
        assert!(client_tls(&none, "http://127.0.0.1:9471").unwrap().is_none());
        assert!(client_tls(&none, "https://collector:9471").unwrap().is_some());
        let e = client_tls(&none, "collector:9471").unwrap_err().to_string();
        assert_eq!(
            e,
            "collector URL \"collector:9471\": must start with http:// or https://"
        );
        let with_ca = TlsSettings {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = client_tls(&with_ca, "http://c:1").unwrap_err().to_string();
        assert!(e.contains("use https://"), "{e}");
        let e = client_tls(&with_ca, "https://c:1").unwrap_err().to_string();
        assert!(e.starts_with("cannot read /nonexistent/ca.pem: "), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = client_tls(
            &TlsSettings {
                ca: Some(junk.clone()),
                ..Default::default()
            },
            "https://c:1",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                junk.display()
            )
        );

        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        let value = load_token(&TlsSettings {
            token_file: Some(token.clone()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer 0123456789abcdef0123");
        assert!(load_token(&none).unwrap().is_none());
        std::fs::write(&token, "x\n").unwrap();
        let e = load_token(&TlsSettings {
            token_file: Some(token.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("{}: the token has 1 characters", token.display())),
            "{e}"
        );
    }
}
