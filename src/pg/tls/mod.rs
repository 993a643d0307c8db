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

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::pg::conninfo::{ConnInfo, Host, RootCert, SslMode, Target};

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
            (SslMode::Require | SslMode::VerifyCa, root) => Verification::Chain(roots(root)?),
            (_, root) => Verification::Full(roots(root)?),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match verification {
            Verification::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertCheck(provider))),
            Verification::Chain(roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider })),
            Verification::Full(roots) => builder.with_root_certificates(roots),
        };
        let config = match info.client_cert() {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, key) = client_identity(cert, key)?;
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

    /// Sends SSLRequest over a fresh socket and, if the server agrees, does the handshake.
    /// Returns the plain stream when TLS is off or refused under `prefer`.
    async fn negotiate<S>(&self, mut stream: S, host: &str) -> Result<MaybeTls<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(config) = &self.config else {
            return Ok(MaybeTls::Plain(stream));
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        let io = |source| TlsError::Handshake { source };
        stream.write_all(&buf).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        // Exactly one byte: anything the server sent after it must go through TLS.
        let answer = stream.read_u8().await.map_err(io)?;
        match answer {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(MaybeTls::Plain(stream)),
            b'N' => return Err(TlsError::NotSupported { mode: self.mode }),
            byte => return Err(TlsError::UnexpectedResponse { byte }),
        }
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = connector
            .connect(server_name(host), stream)
            .await
            .map_err(|source| TlsError::Handshake { source })?;
        Ok(MaybeTls::Tls(Box::new(tls)))
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

fn roots(root: Option<&RootCert>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        Some(RootCert::File(path)) => {
            let bad = |message: String| TlsError::RootCert {
                path: path.clone(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("the file holds no PEM certificate".into()));
            }
            for cert in certs {
                store.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        Some(RootCert::System) | None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "skipping part of the system trust store");
            }
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                // A minimal container may ship no CA bundle; Mozilla's list is the usual one.
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            if store.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(Arc::new(store))
}

fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let bad = |path: &Path, message: String| TlsError::ClientCert {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "the file holds no PEM certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    Ok((chain, key_der))
}

/// `prefer` and plain `require`: encryption without authentication of the server, as libpq
/// does. Handshake signatures are still checked, so the session is bound to the certificate.
#[derive(Debug)]
struct NoCertCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel-binding data (RFC 5929) for a server certificate: its
/// hash with the certificate's signature hash, SHA-256 standing in for MD5 and SHA-1. `None`
/// for signature algorithms without a defined hash (RSA-PSS, EdDSA), which then go unbound.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, .. }, .. }
    let (cert, _) = der_take(cert_der, 0x30)?;
    let (_tbs, rest) = der_take(cert, 0x30)?;
    let (alg, _) = der_take(rest, 0x30)?;
    let (oid, _) = der_take(alg, 0x06)?;
    let algorithm = match oid {
        [prefix @ .., last] if prefix == RSA => match last {
            4 | 5 | 11 => &digest::SHA256,
            12 => &digest::SHA384,
            13 => &digest::SHA512,
            _ => return None,
        },
        _ if oid == ECDSA_SHA1 => &digest::SHA256,
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            2 => &digest::SHA256,
            3 => &digest::SHA384,
            4 => &digest::SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// Splits one DER element with the given tag off the front: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (input.len() >= len).then(|| input.split_at(len))
}

/// A stream after TLS negotiation.
pub(crate) enum MaybeTls<S> {
    /// No TLS.
    Plain(S),
    /// TLS established.
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

/// The socket of a replication connection: TCP, TCP with TLS, or a Unix socket.
pub(crate) enum PgStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl PgStream {
    /// Whether the connection is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, PgStream::Tls(_))
    }

    /// `tls-server-end-point` data for SCRAM channel binding, when TLS is on.
    pub(crate) fn channel_binding(&self) -> Option<Vec<u8>> {
        match self {
            PgStream::Tls(tls) => end_point_of(tls.get_ref().1),
            _ => None,
        }
    }
}

fn end_point_of(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    tls_server_end_point(conn.peer_certificates()?.first()?)
}

macro_rules! delegate_io {
    ($ty:ty, $($variant:path),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_io!(PgStream, PgStream::Tcp, PgStream::Tls, PgStream::Unix);

/// Why a socket to one target could not be opened.
pub(crate) enum OpenError {
    /// TCP or Unix-socket connect failed (or the name did not resolve).
    Connect(io::Error),
    /// TLS negotiation failed.
    Tls(TlsError),
}

/// Opens a socket to `target` and negotiates TLS per the connector's mode.
pub(crate) async fn open(
    target: &Target,
    info: &ConnInfo,
    tls: &TlsConnector,
) -> Result<PgStream, OpenError> {
    let name = match &target.host {
        Host::Unix(_) => {
            let path = target.socket_path().unwrap_or_default();
            let stream = UnixStream::connect(path)
                .await
                .map_err(OpenError::Connect)?;
            return Ok(PgStream::Unix(stream));
        }
        Host::Tcp(name) => name,
    };
    let tcp = connect_tcp(target, name, info.keepalives()).await?;
    match tls.negotiate(tcp, name).await {
        Ok(MaybeTls::Plain(s)) => Ok(PgStream::Tcp(s)),
        Ok(MaybeTls::Tls(s)) => Ok(PgStream::Tls(s)),
        // libpq retries without TLS when a `prefer` handshake fails.
        Err(TlsError::Handshake { source }) if tls.mode == SslMode::Prefer => {
            tracing::debug!(target = %target, error = %source, "TLS failed under sslmode=prefer; retrying without TLS");
            Ok(PgStream::Tcp(
                connect_tcp(target, name, info.keepalives()).await?,
            ))
        }
        Err(e) => Err(OpenError::Tls(e)),
    }
}

async fn connect_tcp(target: &Target, name: &str, keepalive: bool) -> Result<TcpStream, OpenError> {
    let addrs: Vec<SocketAddr> = match target.hostaddr {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::net::lookup_host((name, target.port))
            .await
            .map_err(OpenError::Connect)?
            .collect(),
    };
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        "the host name resolved to no address",
    );
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let attempt = async {
            let socket = socket?;
            socket.set_keepalive(keepalive)?;
            let stream = socket.connect(addr).await?;
            // Status updates are tiny and time-sensitive; don't let Nagle hold them back.
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match attempt.await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(OpenError::Connect(last))
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres integration

impl<S> MakeTlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsError> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            server_name: server_name(domain),
        })
    }
}

/// One TLS handshake for tokio-postgres, made by [`TlsConnector`].
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            // tokio-postgres only asks when sslmode is not disable, and we map disable to
            // disable; a missing config is still an error rather than a silent plain stream.
            let config = self.config.ok_or(TlsError::NotSupported {
                mode: SslMode::Disable,
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(self.server_name, stream)
                .await
                .map_err(|source| TlsError::Handshake { source })?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream handed to tokio-postgres; offers `tls-server-end-point` channel binding.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match end_point_of(self.0.get_ref().1) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ordinary SQL connections

/// Why an ordinary SQL connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings (CA file, client certificate) could not be loaded.
    #[error("{0}")]
    TlsSetup(TlsError),
    /// TLS negotiation with the server failed.
    #[error("TLS with {target} failed: {source}")]
    Tls {
        /// The server, `host:port`.
        target: String,
        /// What went wrong.
        source: TlsError,
    },
    /// The server refused the credentials.
    #[error("{message}")]
    Auth {
        /// The role.
        user: String,
        /// The server's message, or ours when the password is missing, with the fix.
        message: String,
    },
    /// The server reported an error during startup (e.g. the database does not exist).
    #[error(
        "connecting to {target}: {message} (SQLSTATE {code}){}{}",
        crate::source::replication::detail_and_hint(detail, hint),
        crate::source::replication::fix_for(code, message)
    )]
    Server {
        /// The server, `host:port`.
        target: String,
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
        /// DETAIL, if any.
        detail: Option<String>,
        /// HINT, if any.
        hint: Option<String>,
    },
    /// Anything else tokio-postgres reported (unreachable host, timeout, …).
    #[error("could not connect to {target}: {}", error_chain(source))]
    Postgres {
        /// The server, `host:port`.
        target: String,
        /// The error.
        source: tokio_postgres::Error,
    },
}

/// Opens an ordinary SQL connection with the same `sslmode` rules as the replication
/// connection, spawns its connection task, and returns the client. Tries each host in turn.
pub async fn connect_sql(info: &ConnInfo) -> Result<tokio_postgres::Client, ConnectError> {
    connect_sql_watched(info)
        .await
        .map(|(client, _ended)| client)
}

/// [`connect_sql`], and a handle that completes the moment the connection ends: with the
/// error it ended with, or `None` when it closed cleanly (the client was dropped, or the
/// server closed the socket without a word).
pub async fn connect_sql_watched(
    info: &ConnInfo,
) -> Result<(tokio_postgres::Client, JoinHandle<Option<String>>), ConnectError> {
    let tls = TlsConnector::new(info).map_err(ConnectError::TlsSetup)?;
    let mut last = None;
    for target in info.targets() {
        let config = single_target_config(info, target);
        match config.connect(tls.clone()).await {
            Ok((client, connection)) => {
                let target = target.to_string();
                let ended = tokio::spawn(async move {
                    match connection.await {
                        Ok(()) => None,
                        Err(e) => {
                            tracing::warn!(%target, error = %e, "SQL connection ended with an error");
                            Some(e.to_string())
                        }
                    }
                });
                return Ok((client, ended));
            }
            Err(e) => {
                let e = classify(info, target, e);
                tracing::debug!(%target, error = %e, "connection attempt failed");
                last = Some(e);
            }
        }
    }
    // `targets()` is never empty (conninfo falls back to a default host), so `last` is set.
    Err(last.unwrap_or_else(|| ConnectError::TlsSetup(TlsError::NoSystemRoots)))
}

/// A tokio-postgres config for one target, so each host gets its own `sslmode` (Unix sockets
/// never use TLS) and its own error.
fn single_target_config(info: &ConnInfo, target: &Target) -> tokio_postgres::Config {
    use tokio_postgres::config::SslMode as PgSslMode;
    let base = info.config();
    let mut c = tokio_postgres::Config::new();
    c.user(info.user())
        .dbname(info.dbname())
        .application_name(info.application_name())
        .port(target.port)
        .keepalives(base.get_keepalives())
        .keepalives_idle(base.get_keepalives_idle())
        .target_session_attrs(base.get_target_session_attrs())
        .channel_binding(base.get_channel_binding());
    if let Some(pw) = info.password() {
        c.password(pw);
    }
    if let Some(options) = info.options() {
        c.options(options);
    }
    match &target.host {
        Host::Tcp(name) => c.host(name),
        Host::Unix(dir) => c.host_path(dir),
    };
    if let Some(addr) = target.hostaddr {
        c.hostaddr(addr);
    }
    if let Some(t) = info.connect_timeout() {
        c.connect_timeout(t);
    }
    if let Some(t) = base.get_tcp_user_timeout() {
        c.tcp_user_timeout(*t);
    }
    if let Some(t) = base.get_keepalives_interval() {
        c.keepalives_interval(t);
    }
    if let Some(n) = base.get_keepalives_retries() {
        c.keepalives_retries(n);
    }
    c.ssl_mode(match info.sslmode() {
        _ if target.is_unix() => PgSslMode::Disable,
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    c
}

fn classify(info: &ConnInfo, target: &Target, e: tokio_postgres::Error) -> ConnectError {
    use std::error::Error as _;
    let target_s = target.to_string();
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_owned();
        if code.starts_with("28") {
            return ConnectError::Auth {
                user: info.user().to_owned(),
                message: crate::source::replication::auth_message(db.message(), info.user()),
            };
        }
        return ConnectError::Server {
            target: target_s,
            code,
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
        };
    }
    if e.source().is_some_and(|s| s.is::<TlsError>()) {
        let source = match e.into_source().map(|s| s.downcast::<TlsError>()) {
            Some(Ok(tls)) => *tls,
            // Checked just above; keep the text should tokio-postgres ever re-wrap it.
            Some(Err(other)) => TlsError::Handshake {
                source: io::Error::other(other),
            },
            None => TlsError::Handshake {
                source: io::Error::other("TLS failed"),
            },
        };
        return ConnectError::Tls {
            target: target_s,
            source,
        };
    }
    // tokio-postgres reports these two as plain strings; match them to give the typed error.
    let text = error_chain(&e);
    if text.contains("password missing") {
        return ConnectError::Auth {
            user: info.user().to_owned(),
            message: crate::source::replication::missing_password_message(info.user()),
        };
    }
    if text.contains("server does not support TLS") {
        return ConnectError::Tls {
            target: target_s,
            source: TlsError::NotSupported {
                mode: info.sslmode(),
            },
        };
    }
    ConnectError::Postgres {
        target: target_s,
        source: e,
    }
}

/// An error and its causes, `: `-separated (tokio-postgres puts the useful part in the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_take_reads_short_and_long_lengths() {
        assert_eq!(
            der_take(&[0x30, 2, 1, 2, 9], 0x30),
            Some((&[1, 2][..], &[9][..]))
        );
        let mut long = vec![0x04, 0x81, 200];
        long.extend(std::iter::repeat_n(7, 200));
        let (body, rest) = der_take(&long, 0x04).unwrap();
        assert_eq!(body.len(), 200);
        assert!(rest.is_empty());
        assert_eq!(der_take(&[0x30, 5, 1], 0x30), None, "truncated");
        assert_eq!(der_take(&[0x31, 0], 0x30), None, "wrong tag");
    }

    #[test]
    fn end_point_hash_of_garbage_is_none() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
