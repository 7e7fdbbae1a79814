//! TLS for the gRPC endpoint (rustls with the `ring` provider, through tonic's `tls-ring`).
//!
//! - [`server_tls`]: the coordinator's side from `tls.*` (mutual TLS when `tls.client_ca` is
//!   set: clients must present a certificate chaining to it).
//! - [`ClientTls`]: `hyperloopctl`'s side (`--tls-ca`, `--tls-cert`, `--tls-key`) and
//!   [`connect`], which dials a coordinator URL with it.
//!
//! PEM files are read and checked here, when the endpoint is set up, so a wrong path or a
//! file of the wrong kind is reported naming the setting instead of failing the first
//! handshake.

use std::path::{Path, PathBuf};

use hyperloop_shared::config::TlsConfig;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting} ({path}): {source}; point {setting} at a readable PEM file")]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{setting} ({path}) holds no PEM {expected} (no `-----BEGIN ...{expected}-----` block); \
         point {setting} at a PEM-encoded {expected}"
    )]
    NotPem {
        setting: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{missing} is required with {given}: a client certificate needs its private key")]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error(
        "{url} uses https but no CA certificate was given; pass --tls-ca FILE (or \
         HYPERLOOP_TLS_CA) with the CA that signed the coordinator's certificate"
    )]
    NoCa { url: String },
    #[error("{url} is not a valid coordinator URL ({reason}); use http(s)://HOST:PORT")]
    BadUrl { url: String, reason: String },
}

/// Reads a PEM file for `setting` and checks it holds a block whose label ends in `expected`.
fn read_pem(
    setting: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&pem);
    let found = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(expected))
    });
    if found {
        Ok(pem)
    } else {
        Err(TlsError::NotPem {
            setting,
            path: path.to_owned(),
            expected,
        })
    }
}

fn identity(
    (cert_setting, cert): (&'static str, &Path),
    (key_setting, key): (&'static str, &Path),
) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(
        read_pem(cert_setting, cert, "CERTIFICATE")?,
        read_pem(key_setting, key, "PRIVATE KEY")?,
    ))
}

/// The server's TLS settings, or `None` for plain TCP (no `tls.cert`; whether that is
/// allowed on the listen address is the configuration's check).
///
/// # Errors
/// A file that cannot be read or holds no PEM block of the right kind, naming the setting.
pub fn server_tls(cfg: &TlsConfig) -> Result<Option<ServerTlsConfig>, TlsError> {
    let (Some(cert), key) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let key = key.as_deref().ok_or(TlsError::Incomplete {
        given: "tls.cert",
        missing: "tls.key",
    })?;
    let mut tls = ServerTlsConfig::new().identity(identity(
        ("tls.cert", Path::new(cert)),
        ("tls.key", Path::new(key)),
    )?);
    if let Some(ca) = &cfg.client_ca {
        let ca = read_pem("tls.client_ca", Path::new(ca), "CERTIFICATE")?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(tls))
}

/// How `hyperloopctl` authenticates the coordinator (and itself, under mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA that signed the coordinator's certificate (`--tls-ca`).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (`--tls-cert`, `--tls-key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// The tonic client settings, or `None` when no TLS flag is given.
    ///
    /// # Errors
    /// As [`server_tls`], plus a certificate without its key (or the other way round).
    pub fn config(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        if *self == ClientTls::default() {
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem(
                "--tls-ca",
                ca,
                "CERTIFICATE",
            )?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(identity(("--tls-cert", cert), ("--tls-key", key))?);
            }
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    given: "--tls-cert",
                    missing: "--tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    given: "--tls-key",
                    missing: "--tls-cert",
                });
            }
            (None, None) => {}
        }
        Ok(Some(tls))
    }

    /// A (lazily connecting) endpoint for `url` with these settings.
    ///
    /// # Errors
    /// A malformed URL, an https URL without `--tls-ca`, or an unusable PEM file.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let bad = |reason: String| TlsError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(bad("the scheme must be http or https".to_owned()));
        }
        match self.config()? {
            Some(tls) if https => endpoint.tls_config(tls).map_err(|e| bad(e.to_string())),
            None if https => Err(TlsError::NoCa {
                url: url.to_owned(),
            }),
            // TLS flags with an http URL: the operator asked for TLS; use it.
            Some(tls) => endpoint.tls_config(tls).map_err(|e| bad(e.to_string())),
            None => Ok(endpoint),
        }
    }
}

/// Dials `url` and waits for the connection (or the handshake) to succeed.
///
/// # Errors
/// [`TlsError`] for bad settings; the transport error (refused, handshake failure) as text.
pub async fn connect(url: &str, tls: &ClientTls) -> Result<Channel, ConnectError> {
    let endpoint = tls.endpoint(url)?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: url.to_owned(),
            reason: error_chain(&e),
        })
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Settings(#[from] TlsError),
    #[error(
        "cannot reach the coordinator at {url}: {reason}; check that the coordinator is running \
         and that --server (HYPERLOOP_SERVER) is its advertised address"
    )]
    Unreachable { url: String, reason: String },
}

/// An error with its sources, `a: b: c` (tonic's transport errors say little at the top).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_certificate_means_plain_tcp() {
        assert!(server_tls(&TlsConfig::default()).unwrap().is_none());
        assert!(ClientTls::default().config().unwrap().is_none());
    }

    #[test]
    fn unreadable_and_non_pem_files_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let cfg = TlsConfig {
            cert: Some(junk.display().to_string()),
            key: Some(dir.path().join("missing.key").display().to_string()),
            ..TlsConfig::default()
        };
        let err = server_tls(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("tls.cert") && err.contains("PEM CERTIFICATE"),
            "{err}"
        );

        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cfg = TlsConfig {
            cert: Some(cert.display().to_string()),
            ..cfg
        };
        let err = server_tls(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("cannot read tls.key") && err.contains("missing.key"),
            "{err}"
        );

        let client = ClientTls {
            cert: Some(cert),
            ..ClientTls::default()
        };
        let err = client.config().unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }

    #[test]
    fn https_needs_a_ca_and_urls_need_a_scheme() {
        let err = ClientTls::default().endpoint("https://h:1").unwrap_err();
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        let err = ClientTls::default().endpoint("h:1").unwrap_err();
        assert!(err.to_string().contains("http(s)://HOST:PORT"), "{err}");
        assert!(ClientTls::default().endpoint("http://127.0.0.1:1").is_ok());
    }
}
