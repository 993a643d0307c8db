//! The replication connection's socket: TCP (with keepalives, `hostaddr`, every resolved
//! address in turn) or a Unix socket, and the SSLRequest exchange and handshake on it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use super::binding::end_point_of;
use super::{server_name, TlsConnector, TlsError};
use crate::pg::conninfo::{ConnInfo, Host, SslMode, Target};

impl TlsConnector {
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
