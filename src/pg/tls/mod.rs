//! TLS with rustls following libpq's `sslmode` rules, for both connection kinds walhook opens:
//! the replication connection (our own protocol code) and ordinary SQL connections
//! (tokio-postgres, through [`TlsConnector`]'s `MakeTlsConnect`).
//!
//! | sslmode       | TLS                      | certificate check                              |
//! |---------------|--------------------------|------------------------------------------------|
//! | `disable`     | never                    | —                                              |
//! | `prefer`      | if the server offers it  | none                                           |
//! | `require`     | always                   | none; chain only if `sslrootcert` is given     |
//! | `verify-ca`   | always                   | chain to `sslrootcert` or the system roots     |
//! | `verify-full` | always                   | chain and host name                            |
//!
//! Unix sockets never use TLS, as in libpq.
//!
//! One file per job: `verify` holds the certificate checks each mode needs, `socket` opens
//! the replication connection's socket and negotiates TLS on it, `make` is the
//! tokio-postgres `MakeTlsConnect` adapter for SQL connections, and `binding` computes the
//! `tls-server-end-point` data for SCRAM channel binding.

mod binding;
mod make;
mod socket;
mod verify;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use crate::pg::conninfo::{ConnInfo, SslMode};

pub(crate) use socket::{open, OpenError, PgStream};

/// Why TLS could not be set up or negotiated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The server answered the TLS request with 'N' and the mode insists on TLS.
    #[error(
        "the server does not accept TLS connections, but sslmode={mode} requires TLS; turn on \
         `ssl` in the server's postgresql.conf, or use sslmode=prefer or sslmode=disable"
    )]
    NotSupported {
        /// The mode that insisted.
        mode: SslMode,
    },
    /// The server answered the TLS request with something other than 'S' or 'N'.
    #[error(
        "the server answered the TLS request with byte {byte:#04x} instead of 'S' or 'N'; is \
         this a Postgres server?"
    )]
    UnexpectedResponse {
        /// The byte received.
        byte: u8,
    },
    /// The handshake failed, e.g. the certificate did not verify.
    #[error("TLS handshake failed: {source}{}", handshake_fix(source))]
    Handshake {
        /// The error from rustls, wrapped by tokio-rustls.
        source: io::Error,
    },
    /// The `sslrootcert` file could not be read.
    #[error("cannot read sslrootcert {}: {message}", path.display())]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The system trust store held no usable certificate.
    #[error(
        "no trusted CA certificates found in the system store; set sslrootcert to the CA file \
         that signed the server certificate"
    )]
    NoSystemRoots,
    /// The client certificate or key (`sslcert`, `sslkey`) could not be read.
    #[error("cannot use client certificate {}: {message}", path.display())]
    ClientCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsError {
    /// Whether the server certificate failed verification (unknown CA, wrong name, expired…).
    pub fn is_certificate_error(&self) -> bool {
        matches!(self, TlsError::Handshake { source } if matches!(
            rustls_error(source),
            Some(rustls::Error::InvalidCertificate(_))
        ))
    }
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The fix for the common handshake failures, appended to the message.
fn handshake_fix(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => {
                "; the server certificate is not signed by a trusted CA: set sslrootcert to the \
                 CA file that signed it, or use sslmode=require to skip verification"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "; the server certificate does not name the host connected to: connect by a \
                 name the certificate lists, or use sslmode=verify-ca"
            }
            C::Expired | C::ExpiredContext { .. } => "; the server certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "; the server certificate is not valid yet (check the clock)"
            }
            _ => "",
        },
        _ => "",
    }
}

/// The rustls side of one `sslmode`, shared by replication and SQL connections.
///
/// Also a `tokio_postgres::tls::MakeTlsConnect`, so `tokio_postgres::Config::connect` follows
/// the same rules.
#[derive(Clone)]
pub struct TlsConnector {
    mode: SslMode,
    /// `None` under `sslmode=disable`.
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsConnector(sslmode={})", self.mode)
    }
}

enum Verification {
    None,
    Chain(Arc<RootCertStore>),
    Full(Arc<RootCertStore>),
}

impl TlsConnector {
    /// Builds the rustls configuration the connection string asks for (reads CA and client
    /// certificate files).
    pub fn new(info: &ConnInfo) -> Result<TlsConnector, TlsError> {
        let mode = info.sslmode();
        if mode == SslMode::Disable {
            return Ok(TlsConnector { mode, config: None });
        }
        let verification = match (mode, info.sslrootcert()) {
            (SslMode::Prefer, _) => Verification::None,
            // libpq: under `require`, a given root certificate turns on chain verification.
            (SslMode::Require, None) => Verification::None,
            (SslMode::Require | SslMode::VerifyCa, root) => {
                Verification::Chain(verify::roots(root)?)
            }
            (_, root) => Verification::Full(verify::roots(root)?),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match verification {
            Verification::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::NoCertCheck(provider))),
            Verification::Chain(roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::ChainOnly { roots, provider })),
            Verification::Full(roots) => builder.with_root_certificates(roots),
        };
        let config = match info.client_cert() {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, key) = verify::client_identity(cert, key)?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        Ok(TlsConnector {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    /// The `sslmode` this connector follows.
    pub fn mode(&self) -> SslMode {
        self.mode
    }
}

/// The name for SNI and the `verify-full` check.
fn server_name(host: &str) -> ServerName<'static> {
    // A host that is neither a DNS name nor an IP address cannot pass verify-full anyway; an
    // IP placeholder gets through the other modes and sends no SNI.
    ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED).into(),
    ))
}
