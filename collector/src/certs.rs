//! `hostpulse-collector certs`: a small private CA for installs that have
//! none. It writes `ca.pem` and `ca-key.pem` (the CA), `server.pem` and
//! `server-key.pem` (the collector, with every `--server-name` as a subject
//! alternative name) and `HOST.pem` and `HOST-key.pem` for every agent (the
//! host name as both DNS name and common name, which is what
//! [`crate::auth::certificate_identity`] reads back as the host identity).
//!
//! Keys are ECDSA P-256 and written with mode 0600. Nothing is written if
//! any target file exists, unless `force` is set, so a second run cannot
//! silently replace a CA whose agents are already deployed.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration as TimeDuration, OffsetDateTime};

/// How long the CA is valid.
const CA_VALIDITY: TimeDuration = TimeDuration::days(10 * 365);
/// How long server and agent certificates are valid.
const LEAF_VALIDITY: TimeDuration = TimeDuration::days(5 * 365);
/// Certificates start being valid this long before they are made, so a
/// peer whose clock is slightly behind still accepts them.
const BACKDATE: TimeDuration = TimeDuration::hours(1);

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsRequest {
    /// Directory to write into (created if missing).
    pub out: PathBuf,
    /// Names (DNS names or IP addresses) agents use to reach the collector.
    pub server_names: Vec<String>,
    /// Agent host names, one certificate each.
    pub agents: Vec<String>,
    /// Replace existing files.
    pub force: bool,
}

/// Why no certificates were written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The request itself is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Files exist and `force` was not given.
    #[error("refusing to overwrite {} (pass --force to replace them)", list(.0))]
    Exists(Vec<PathBuf>),
    /// rcgen could not build a certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// Why.
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One file `certs` writes.
struct Output {
    path: PathBuf,
    contents: String,
    secret: bool,
}

/// The files of a request, in the order they are written; names only, so
/// collisions and existing files are found before any key is generated.
pub fn file_names(request: &CertsRequest) -> Vec<PathBuf> {
    let mut names = vec![
        "ca.pem".to_string(),
        "ca-key.pem".into(),
        "server.pem".into(),
        "server-key.pem".into(),
    ];
    for agent in &request.agents {
        names.push(format!("{agent}.pem"));
        names.push(format!("{agent}-key.pem"));
    }
    names.into_iter().map(|n| request.out.join(n)).collect()
}

/// Checks names before anything is generated: server names present, agent
/// names usable both as a host identity and as a file name, no two files
/// with the same name.
pub fn check_request(request: &CertsRequest) -> Result<(), CertsError> {
    if request.server_names.is_empty() {
        return Err(CertsError::Invalid(
            "give at least one --server-name: the name or address agents connect to".into(),
        ));
    }
    for name in &request.server_names {
        if name.is_empty() || !name.is_ascii() || name.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(CertsError::Invalid(format!(
                "server name {name:?} is not a DNS name or IP address"
            )));
        }
    }
    for agent in &request.agents {
        crate::ingest::validate::check_host(agent).map_err(CertsError::Invalid)?;
        let file_safe = agent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !file_safe || agent.starts_with('.') {
            return Err(CertsError::Invalid(format!(
                "agent name {agent:?} must be letters, digits, '-', '_' and '.' (not first), as it names files"
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for path in file_names(request) {
        if !seen.insert(path.clone()) {
            return Err(CertsError::Invalid(format!(
                "two certificates would be written to {}; rename an agent",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Generates and writes everything; returns the files written.
pub fn generate(request: &CertsRequest) -> Result<Vec<PathBuf>, CertsError> {
    check_request(request)?;
    if !request.force {
        let existing: Vec<PathBuf> = file_names(request).into_iter().filter(|p| p.exists()).collect();
        if !existing.is_empty() {
            return Err(CertsError::Exists(existing));
        }
    }
    let outputs = build(request, OffsetDateTime::now_utc())?;
    std::fs::create_dir_all(&request.out).map_err(|source| CertsError::Write {
        path: request.out.clone(),
        source,
    })?;
    let mut written = Vec::with_capacity(outputs.len());
    for output in outputs {
        write_file(&output.path, &output.contents, output.secret, request.force)?;
        written.push(output.path);
    }
    Ok(written)
}

/// Builds every certificate and key in memory, valid from `now`.
fn build(request: &CertsRequest, now: OffsetDateTime) -> Result<Vec<Output>, CertsError> {
    let generate = |what: &str| {
        let what = what.to_string();
        move |source| CertsError::Generate { what, source }
    };
    let ca_key = KeyPair::generate().map_err(generate("the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "hostpulse CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - BACKDATE;
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca.self_signed(&ca_key).map_err(generate("the CA certificate"))?;
    let mut outputs = vec![
        Output {
            path: request.out.join("ca.pem"),
            contents: ca_cert.pem(),
            secret: false,
        },
        Output {
            path: request.out.join("ca-key.pem"),
            contents: ca_key.serialize_pem(),
            secret: true,
        },
    ];
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: &[String], eku: ExtendedKeyUsagePurpose, what: &str| -> Result<(String, String), CertsError> {
        let key = KeyPair::generate().map_err(generate(what))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(generate(what))?;
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &issuer).map_err(generate(what))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (cert, key) = leaf(
        &request.server_names,
        ExtendedKeyUsagePurpose::ServerAuth,
        "the server certificate",
    )?;
    outputs.push(Output {
        path: request.out.join("server.pem"),
        contents: cert,
        secret: false,
    });
    outputs.push(Output {
        path: request.out.join("server-key.pem"),
        contents: key,
        secret: true,
    });
    for agent in &request.agents {
        let (cert, key) = leaf(
            std::slice::from_ref(agent),
            ExtendedKeyUsagePurpose::ClientAuth,
            &format!("the certificate of agent {agent:?}"),
        )?;
        outputs.push(Output {
            path: request.out.join(format!("{agent}.pem")),
            contents: cert,
            secret: false,
        });
        outputs.push(Output {
            path: request.out.join(format!("{agent}-key.pem")),
            contents: key,
            secret: true,
        });
    }
    Ok(outputs)
}

/// Writes one file, private keys readable by the owner only from the
/// moment they exist. With `replace`, an existing file is removed first so
/// the new one is created with the right mode.
fn write_file(path: &Path, contents: &str, secret: bool, replace: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if replace {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(out: &Path, agents: &[&str]) -> CertsRequest {
        CertsRequest {
            out: out.to_path_buf(),
            server_names: vec!["collector.example".into(), "127.0.0.1".into()],
            agents: agents.iter().map(|a| a.to_string()).collect(),
            force: false,
        }
    }

    #[test]
    fn writes_every_file_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let written = generate(&request(&out, &["alpha", "beta"])).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "server.pem",
                "server-key.pem",
                "alpha.pem",
                "alpha-key.pem",
                "beta.pem",
                "beta-key.pem"
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for p in &written {
                let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                let expected = if p.to_string_lossy().ends_with("-key.pem") {
                    0o600
                } else {
                    0o644
                };
                assert_eq!(mode, expected, "{}", p.display());
            }
        }
        // The agent certificate names its host the way ingest reads it.
        let pem = std::fs::read(out.join("alpha.pem")).unwrap();
        let der = crate::tls::parse_certificates(Path::new("alpha.pem"), &pem).unwrap();
        assert_eq!(crate::auth::certificate_identity(&der[0]).unwrap(), "alpha");
        // The server files load as a TLS configuration requiring client certs.
        let tls = crate::tls::load(&crate::tls::ServerTls {
            cert: out.join("server.pem"),
            key: out.join("server-key.pem"),
            client_ca: Some(out.join("ca.pem")),
            handshake_timeout: crate::tls::DEFAULT_HANDSHAKE_TIMEOUT,
        })
        .unwrap();
        assert!(tls.client_certs_required);
    }

    #[test]
    fn refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path(), &["alpha"]);
        generate(&req).unwrap();
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let e = generate(&req).unwrap_err().to_string();
        assert!(e.starts_with("refusing to overwrite "), "{e}");
        assert!(e.contains("ca.pem") && e.contains("alpha-key.pem"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        req.force = true;
        generate(&req).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
    }

    #[test]
    fn bad_requests_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["s"], &["../evil"], "names files"),
            (&["s"], &[".hidden"], "names files"),
            (&["s"], &["a b"], "whitespace"),
            (&["s"], &["ca"], "two certificates would be written to"),
            (&["s"], &["x", "x-key"], "two certificates would be written to"),
            (&[], &["alpha"], "at least one --server-name"),
        ];
        for (servers, agents, needle) in cases {
            let mut req = request(dir.path(), agents);
            req.server_names = servers.iter().map(|s| s.to_string()).collect();
            let e = generate(&req).unwrap_err().to_string();
            assert!(e.contains(needle), "{agents:?}: {e}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
