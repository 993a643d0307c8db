//! Framing on the replication socket: one buffered reader and one buffered writer, both kept in
//! the connection so that a call cancelled by `tokio::select!` loses nothing, plus the startup
//! and authentication exchange.

use std::io;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::config::ChannelBinding as ChannelBindingMode;

use super::error::{server_error, ReplicationError};
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::{missing_password_message, ServerMessage};
use crate::pg::tls::PgStream;

/// The largest frame accepted. The walsender builds each message in a `StringInfo`, which
/// Postgres caps at 1 GB, so anything larger is a corrupt or hostile stream.
const MAX_FRAME: usize = (1 << 30) + (1 << 16);

/// How much room to make before each read, so small frames are read in few syscalls.
const READ_CHUNK: usize = 16 * 1024;

/// Session settings the value converter relies on: the text form of every column in pgoutput
/// is produced by the walsender with these (a SQL_ASCII database is then read in its own
/// encoding: see `ReplicationConnection::connect`).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "1"),
    ("client_encoding", "UTF8"),
];

/// The authentication the server asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked (`trust`, `peer`, client certificate…).
    Trust,
    /// Cleartext password.
    Cleartext,
    /// MD5 password hash.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS: bound to the TLS channel (`tls-server-end-point`).
    ScramSha256Plus,
}

/// One backend frame: what postgres-protocol parses, plus CopyBothResponse, which it lacks.
pub(crate) enum Frame {
    Message(Message),
    CopyBothResponse,
}

impl Frame {
    /// A short name for error messages.
    pub(crate) fn describe(&self) -> String {
        let name = match self {
            Frame::CopyBothResponse => "CopyBothResponse",
            Frame::Message(m) => match m {
                Message::AuthenticationOk => "AuthenticationOk",
                Message::BackendKeyData(_) => "BackendKeyData",
                Message::CommandComplete(_) => "CommandComplete",
                Message::CopyData(_) => "CopyData",
                Message::CopyDone => "CopyDone",
                Message::CopyInResponse(_) => "CopyInResponse",
                Message::CopyOutResponse(_) => "CopyOutResponse",
                Message::DataRow(_) => "DataRow",
                Message::EmptyQueryResponse => "EmptyQueryResponse",
                Message::ErrorResponse(_) => "ErrorResponse",
                Message::NoticeResponse(_) => "NoticeResponse",
                Message::ParameterStatus(_) => "ParameterStatus",
                Message::ReadyForQuery(_) => "ReadyForQuery",
                Message::RowDescription(_) => "RowDescription",
                _ => "another message",
            },
        };
        name.to_owned()
    }
}

/// The socket with its read and write buffers.
pub(crate) struct Wire {
    stream: PgStream,
    /// Bytes read but not yet parsed; at most one partial frame beyond the complete ones.
    rbuf: BytesMut,
    /// Bytes queued for the server; drained by `flush`, which resumes after cancellation.
    wbuf: BytesMut,
    /// Bytes went into the stream since its last flush (TLS buffers records).
    unflushed: bool,
    /// `host:port` for error messages.
    pub(crate) target: String,
    /// The role, for authentication errors.
    pub(crate) user: String,
}

impl Wire {
    pub(crate) fn new(stream: PgStream, target: String, user: String) -> Wire {
        Wire {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            unflushed: false,
            target,
            user,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The write buffer, to queue frontend messages into.
    pub(crate) fn out(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Whether queued bytes wait to be written.
    pub(crate) fn has_pending_writes(&self) -> bool {
        !self.wbuf.is_empty() || self.unflushed
    }

    fn io_error(&self, source: io::Error) -> ReplicationError {
        ReplicationError::Io {
            target: self.target.clone(),
            source,
        }
    }

    /// Writes out everything queued. Cancel-safe: what was not written stays queued and the
    /// next call carries on.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        while !self.wbuf.is_empty() {
            self.unflushed = true;
            match self.stream.write_buf(&mut self.wbuf).await {
                Ok(0) => return Err(self.io_error(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        if self.unflushed {
            self.stream.flush().await.map_err(|e| self.io_error(e))?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Takes one complete frame off the read buffer, if there is one. No I/O.
    pub(crate) fn parse_buffered(
        &mut self,
        context: &str,
    ) -> Result<Option<Frame>, ReplicationError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.rbuf[0];
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        let total = len as usize + 1;
        if len < 4 || total > MAX_FRAME {
            return Err(ReplicationError::Protocol {
                context: context.to_owned(),
                expected: "a message of 4 bytes to 1 GiB",
                got: format!("message {:?} claiming {len} bytes", char::from(tag)),
            });
        }
        if self.rbuf.len() < total {
            // Make room for exactly the rest of this frame, not more.
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        if tag == b'W' {
            // CopyBothResponse: format and per-column formats, nothing we need.
            self.rbuf.advance(total);
            return Ok(Some(Frame::CopyBothResponse));
        }
        match Message::parse(&mut self.rbuf) {
            Ok(Some(m)) => Ok(Some(Frame::Message(m))),
            Ok(None) => Ok(None),
            Err(e) => Err(ReplicationError::Protocol {
                context: context.to_owned(),
                expected: "a well-formed backend message",
                got: format!("message {:?}: {e}", char::from(tag)),
            }),
        }
    }

    /// Reads more bytes into the buffer. Cancel-safe: a read either happened or did not.
    pub(crate) async fn fill(&mut self) -> Result<(), ReplicationError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(self.io_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// The next frame, reading as needed. Cancel-safe.
    pub(crate) async fn read_frame(&mut self, context: &str) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(frame) = self.parse_buffered(context)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Sends Terminate and closes the socket (TLS close_notify included).
    pub(crate) async fn terminate(&mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        // The server may already have closed its side; that is fine when saying goodbye.
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Startup message and authentication, up to the first ReadyForQuery.
    pub(crate) async fn startup(&mut self, info: &ConnInfo) -> Result<Session, ReplicationError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", info.user()),
            ("database", info.dbname()),
            ("replication", "database"),
            ("application_name", info.application_name()),
        ];
        if let Some(options) = info.options() {
            params.push(("options", options));
        }
        params.extend_from_slice(SESSION_SETTINGS);
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(|e| {
            ReplicationError::InvalidInput {
                what: "connection parameter",
                message: e.to_string(),
            }
        })?;
        self.flush().await?;

        let method = self.authenticate(info).await?;
        let mut session = Session {
            auth: method,
            backend_pid: None,
            server_version: None,
            server_encoding: None,
        };
        loop {
            match self.read_frame("startup").await? {
                Frame::Message(Message::ReadyForQuery(_)) => return Ok(session),
                Frame::Message(Message::BackendKeyData(k)) => {
                    session.backend_pid = Some(k.process_id());
                }
                Frame::Message(Message::ParameterStatus(p)) => match p.name().ok() {
                    Some("server_version") => {
                        session.server_version = p.value().ok().map(str::to_owned);
                    }
                    Some("server_encoding") => {
                        session.server_encoding = p.value().ok().map(str::to_owned);
                    }
                    _ => {}
                },
                Frame::Message(Message::NoticeResponse(n)) => log_notice(&n),
                Frame::Message(Message::ErrorResponse(e)) => {
                    let context = format!("connecting to {}", self.target);
                    return Err(server_error(ServerMessage::parse(&e), &context, &self.user));
                }
                other => {
                    return Err(ReplicationError::Protocol {
                        context: "startup".into(),
                        expected: "ParameterStatus, BackendKeyData or ReadyForQuery",
                        got: other.describe(),
                    })
                }
            }
        }
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<AuthMethod, ReplicationError> {
        const CONTEXT: &str = "authentication";
        let mut method = AuthMethod::Trust;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = match self.read_frame(CONTEXT).await? {
                Frame::Message(m) => m,
                other => return Err(unexpected_auth(other.describe())),
            };
            match message {
                Message::AuthenticationOk => return Ok(method),
                Message::AuthenticationCleartextPassword => {
                    method = AuthMethod::Cleartext;
                    let password = self.password(info)?;
                    frontend::password_message(password, &mut self.wbuf)
                        .map_err(|e| invalid_password(&e))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    method = AuthMethod::Md5;
                    let password = self.password(info)?;
                    let hash = md5_hash(info.user().as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| invalid_password(&e))?;
                }
                Message::AuthenticationSasl(body) => {
                    let password = self.password(info)?;
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms.next().map_err(|e| bad_auth(&e))? {
                        offered.push(m.to_owned());
                    }
                    let (chosen, binding) = self.choose_scram(info, &offered)?;
                    method = chosen;
                    let mechanism = match chosen {
                        AuthMethod::ScramSha256Plus => SCRAM_SHA_256_PLUS,
                        _ => SCRAM_SHA_256,
                    };
                    let client = ScramSha256::new(password, binding);
                    frontend::sasl_initial_response(mechanism, client.message(), &mut self.wbuf)
                        .map_err(|e| bad_auth(&e))?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| unexpected_auth("SASLContinue".into()))?;
                    client
                        .update(body.data())
                        .map_err(|e| ReplicationError::Auth {
                            user: self.user.clone(),
                            message: format!("SCRAM exchange with the server failed: {e}"),
                        })?;
                    frontend::sasl_response(client.message(), &mut self.wbuf)
                        .map_err(|e| bad_auth(&e))?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| unexpected_auth("SASLFinal".into()))?;
                    client
                        .finish(body.data())
                        .map_err(|e| ReplicationError::Auth {
                            user: self.user.clone(),
                            message: format!(
                                "the server's SCRAM proof did not verify ({e}); it may not be the \
                             server it claims to be"
                            ),
                        })?;
                    // AuthenticationOk follows.
                    continue;
                }
                Message::ErrorResponse(body) => {
                    let context = format!("connecting to {}", self.target);
                    return Err(server_error(
                        ServerMessage::parse(&body),
                        &context,
                        &self.user,
                    ));
                }
                Message::NoticeResponse(n) => {
                    log_notice(&n);
                    continue;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi => {
                    return Err(ReplicationError::Auth {
                        user: self.user.clone(),
                        message: format!(
                            "the server asks user {} for Kerberos/GSSAPI/SSPI authentication, \
                             which walhook does not support; use scram-sha-256 (or md5) for it \
                             in pg_hba.conf",
                            self.user
                        ),
                    });
                }
                other => return Err(unexpected_auth(Frame::Message(other).describe())),
            }
            self.flush().await?;
        }
    }

    fn password<'a>(&self, info: &'a ConnInfo) -> Result<&'a [u8], ReplicationError> {
        info.password().ok_or_else(|| ReplicationError::Auth {
            user: self.user.clone(),
            message: missing_password_message(&self.user),
        })
    }

    /// SCRAM-SHA-256-PLUS when TLS gives us the server certificate and the server offers it;
    /// plain SCRAM-SHA-256 otherwise, telling the server truthfully whether we could bind.
    fn choose_scram(
        &self,
        info: &ConnInfo,
        offered: &[String],
    ) -> Result<(AuthMethod, ChannelBinding), ReplicationError> {
        let has = |m: &str| offered.iter().any(|o| o == m);
        let end_point = match info.channel_binding() {
            ChannelBindingMode::Disable => None,
            _ => self.stream.channel_binding(),
        };
        let require = info.channel_binding() == ChannelBindingMode::Require;
        match end_point {
            Some(hash) if has(SCRAM_SHA_256_PLUS) => Ok((
                AuthMethod::ScramSha256Plus,
                ChannelBinding::tls_server_end_point(hash),
            )),
            _ if require => Err(ReplicationError::Auth {
                user: self.user.clone(),
                message: "channel_binding=require, but the connection offers no channel \
                          binding (it needs TLS and SCRAM-SHA-256-PLUS on the server)"
                    .into(),
            }),
            _ if !has(SCRAM_SHA_256) => Err(ReplicationError::Auth {
                user: self.user.clone(),
                message: format!(
                    "the server offers only SASL mechanisms {offered:?}; walhook speaks \
                     SCRAM-SHA-256"
                ),
            }),
            // "y": we could bind but the server did not offer it (guards against a downgrade).
            Some(_) => Ok((AuthMethod::ScramSha256, ChannelBinding::unrequested())),
            None => Ok((AuthMethod::ScramSha256, ChannelBinding::unsupported())),
        }
    }
}

/// What the server told us at startup.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) auth: AuthMethod,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) server_version: Option<String>,
    /// The database's encoding, as the server reports it at startup.
    pub(crate) server_encoding: Option<String>,
}

fn unexpected_auth(got: String) -> ReplicationError {
    ReplicationError::Protocol {
        context: "authentication".into(),
        expected: "an authentication request, AuthenticationOk or ErrorResponse",
        got,
    }
}

fn bad_auth(e: &io::Error) -> ReplicationError {
    ReplicationError::Protocol {
        context: "authentication".into(),
        expected: "a well-formed SASL message",
        got: e.to_string(),
    }
}

fn invalid_password(e: &io::Error) -> ReplicationError {
    // The only failure is an embedded NUL; say so without echoing the password.
    ReplicationError::InvalidInput {
        what: "password",
        message: format!("it cannot be sent ({e})"),
    }
}

/// Logs a NoticeResponse (a WARNING from the server, say) without failing.
pub(crate) fn log_notice(body: &backend::NoticeResponseBody) {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    tracing::info!(sqlstate = %code, "server notice: {message}");
}
