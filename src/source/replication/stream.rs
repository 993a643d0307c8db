//! The CopyBoth phase: XLogData and keepalives in, standby status updates out.

use std::time::Duration;

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::time::Instant;

use super::error::{server_error, ReplicationError};
use super::wire::{log_notice, Frame, Wire};
use crate::pg::error::ServerMessage;
use crate::pg::Lsn;
use crate::time;

/// How often a status update goes out when nothing else prompts one (as pg_recvlogical).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long `close` waits for the server to finish the copy before dropping the socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A message from the walsender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: for logical replication, one output-plugin message (pgoutput bytes).
    XLogData {
        /// The WAL position this message starts at (0 for some pgoutput messages).
        wal_start: Lsn,
        /// The server's current WAL end.
        wal_end: Lsn,
        /// Server clock at sending, µs since 2000-01-01.
        server_time: i64,
        /// The output plugin's message.
        data: Bytes,
    },
    /// Primary keepalive; when it asked for a reply, the reply has already gone out.
    Keepalive {
        /// The server's current WAL end.
        wal_end: Lsn,
        /// Server clock at sending, µs since 2000-01-01.
        server_time: i64,
        /// Whether the server asked for an immediate status update.
        reply_requested: bool,
    },
}

/// A replication connection in streaming mode.
///
/// `next` is cancel-safe: partial frames stay in the read buffer, unsent bytes in the write
/// buffer, and a message whose keepalive reply was still being written is returned by the next
/// call.
pub struct ReplicationStream {
    wire: Wire,
    /// Everything up to here is durably handled; reported as write = flush = apply.
    acknowledged: Lsn,
    /// `None`: only send status when asked to (keepalive or `send_status`).
    status_interval: Option<Duration>,
    next_status: Instant,
    /// A parsed message held back while the status reply it caused was being written.
    ready: Option<ReplicationMessage>,
    /// The server sent CopyDone.
    server_done: bool,
    /// We sent CopyDone.
    client_done: bool,
    /// The server ended the whole command (CommandComplete) and is gone.
    ended: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("target", &self.wire.target)
            .field("acknowledged", &self.acknowledged)
            .field("server_done", &self.server_done)
            .finish()
    }
}

impl ReplicationStream {
    pub(crate) fn new(wire: Wire, start: Lsn) -> ReplicationStream {
        ReplicationStream {
            wire,
            acknowledged: start,
            status_interval: Some(DEFAULT_STATUS_INTERVAL),
            next_status: Instant::now() + DEFAULT_STATUS_INTERVAL,
            ready: None,
            server_done: false,
            client_done: false,
            ended: false,
        }
    }

    /// Sets how often `next` sends a status update on its own; `Duration::ZERO` turns the
    /// periodic update off (keepalive replies still go out). Keep it below the server's
    /// `wal_sender_timeout`.
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.status_interval = (!interval.is_zero()).then_some(interval);
        self.next_status = Instant::now() + interval;
    }

    /// The position last given to [`acknowledge`](Self::acknowledge) (or the start position).
    pub fn acknowledged(&self) -> Lsn {
        self.acknowledged
    }

    /// Next message; `Ok(None)` when the server ended the copy. Sends a status update every
    /// status interval and answers keepalives that ask for one, with the positions last given
    /// to [`acknowledge`](Self::acknowledge). Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        loop {
            if self.server_done && self.ready.is_none() {
                return Ok(None);
            }
            if self
                .status_interval
                .is_some_and(|_| Instant::now() >= self.next_status)
            {
                self.queue_status(false);
            }
            // Whatever is owed to the server goes out before anything else is handed back.
            self.wire.flush().await?;
            if let Some(message) = self.ready.take() {
                return Ok(Some(message));
            }
            if let Some(frame) = self.wire.parse_buffered("replication streaming")? {
                // No await between parsing and storing: a cancellation cannot lose the frame.
                if let Some(message) = self.handle(frame)? {
                    if self.wire.has_pending_writes() {
                        self.ready = Some(message);
                        continue;
                    }
                    return Ok(Some(message));
                }
                continue;
            }
            match self.status_interval {
                Some(_) => {
                    let deadline = self.next_status;
                    tokio::select! {
                        read = self.wire.fill() => read?,
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => self.wire.fill().await?,
            }
        }
    }

    /// Records that everything up to `lsn` is durably handled (write = flush = apply = `lsn`);
    /// sent with the next status update. Never moves backwards.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.acknowledged = self.acknowledged.max(lsn);
    }

    /// Sends a standby status update now, optionally asking the server to reply with a
    /// keepalive.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), ReplicationError> {
        self.queue_status(reply_requested);
        self.wire.flush().await
    }

    /// Clean shutdown: a final status update, CopyDone, the rest of the stream drained until
    /// ReadyForQuery, then Terminate. The slot is released when this returns.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        let target = self.wire.target.clone();
        match tokio::time::timeout(CLOSE_TIMEOUT, self.finish()).await {
            Ok(result) => result,
            Err(_) => {
                // Dropping the socket ends the walsender just the same, only less politely.
                tracing::warn!(%target, "server did not finish the copy in time; closing the socket");
                Err(ReplicationError::Timeout {
                    target,
                    timeout: CLOSE_TIMEOUT,
                })
            }
        }
    }

    async fn finish(&mut self) -> Result<(), ReplicationError> {
        const CONTEXT: &str = "closing the replication stream";
        if self.ended {
            return Ok(());
        }
        self.queue_status(false);
        if !self.client_done {
            frontend::copy_done(self.wire.out());
            self.client_done = true;
        }
        self.wire.flush().await?;
        loop {
            match self.wire.read_frame(CONTEXT).await? {
                // Data still in flight was never acknowledged; the slot will send it again.
                Frame::Message(Message::CopyData(_)) => {}
                Frame::Message(Message::CopyDone) => self.server_done = true,
                Frame::Message(Message::CommandComplete(_) | Message::ParameterStatus(_)) => {}
                Frame::Message(Message::NoticeResponse(n)) => log_notice(&n),
                Frame::Message(Message::ReadyForQuery(_)) => break,
                Frame::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(
                        ServerMessage::parse(&body),
                        CONTEXT,
                        &self.wire.user,
                    ));
                }
                other => {
                    return Err(ReplicationError::Protocol {
                        context: CONTEXT.into(),
                        expected: "CopyData, CopyDone, CommandComplete or ReadyForQuery",
                        got: other.describe(),
                    })
                }
            }
        }
        self.wire.terminate().await
    }

    /// Turns a frame into a message for the caller, or handles it silently.
    fn handle(&mut self, frame: Frame) -> Result<Option<ReplicationMessage>, ReplicationError> {
        const CONTEXT: &str = "replication streaming";
        let message = match frame {
            Frame::Message(Message::CopyData(body)) => body.into_bytes(),
            Frame::Message(Message::CopyDone) => {
                self.server_done = true;
                return Ok(None);
            }
            // A walsender that is shutting down (fast shutdown, once it has sent everything)
            // ends the copy with CommandComplete alone and exits: no CopyDone, no
            // ReadyForQuery, so there is nothing left to close politely.
            Frame::Message(Message::CommandComplete(_)) => {
                self.server_done = true;
                self.ended = true;
                return Ok(None);
            }
            Frame::Message(Message::NoticeResponse(n)) => {
                log_notice(&n);
                return Ok(None);
            }
            Frame::Message(Message::ParameterStatus(_)) => return Ok(None),
            Frame::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(
                    ServerMessage::parse(&body),
                    CONTEXT,
                    &self.wire.user,
                ));
            }
            other => {
                return Err(ReplicationError::Protocol {
                    context: CONTEXT.into(),
                    expected: "CopyData, CopyDone or ErrorResponse",
                    got: other.describe(),
                })
            }
        };
        let parsed = parse_copy_data(message)?;
        if let ReplicationMessage::Keepalive {
            reply_requested: true,
            ..
        } = parsed
        {
            self.queue_status(false);
        }
        Ok(Some(parsed))
    }

    /// Queues a standby status update ('r') and restarts the interval.
    fn queue_status(&mut self, reply_requested: bool) {
        let lsn = self.acknowledged.0;
        let mut body = [0u8; 34];
        body[0] = b'r';
        body[1..9].copy_from_slice(&lsn.to_be_bytes()); // written
        body[9..17].copy_from_slice(&lsn.to_be_bytes()); // flushed
        body[17..25].copy_from_slice(&lsn.to_be_bytes()); // applied
        body[25..33].copy_from_slice(&time::pg_now_micros().to_be_bytes());
        body[33] = u8::from(reply_requested);
        // Cannot fail: the body is far below the 1 GB CopyData limit.
        if let Ok(data) = frontend::CopyData::new(&body[..]) {
            data.write(self.wire.out());
        }
        if let Some(interval) = self.status_interval {
            self.next_status = Instant::now() + interval;
        }
        tracing::trace!(acknowledged = %self.acknowledged, reply_requested, "standby status update queued");
    }
}

/// Parses the body of a CopyData frame from the walsender.
fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let bad = |got: String| ReplicationError::Protocol {
        context: "replication streaming".into(),
        expected: "XLogData ('w', 25-byte header) or keepalive ('k', 18 bytes)",
        got,
    };
    if data.is_empty() {
        return Err(bad("an empty CopyData".into()));
    }
    match data.get_u8() {
        b'w' => {
            if data.len() < 24 {
                return Err(bad(format!("XLogData of {} bytes", data.len() + 1)));
            }
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let server_time = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
            })
        }
        b'k' => {
            if data.len() < 17 {
                return Err(bad(format!("keepalive of {} bytes", data.len() + 1)));
            }
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(data.get_u64()),
                server_time: data.get_i64(),
                reply_requested: data.get_u8() != 0,
            })
        }
        tag => Err(bad(format!("CopyData of type {:?}", char::from(tag)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata() {
        let mut raw = vec![b'w'];
        raw.extend_from_slice(&0x16B3748u64.to_be_bytes());
        raw.extend_from_slice(&0x16B3800u64.to_be_bytes());
        raw.extend_from_slice(&42i64.to_be_bytes());
        raw.extend_from_slice(b"Bpayload");
        let m = parse_copy_data(Bytes::from(raw)).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x16B3748),
                wal_end: Lsn(0x16B3800),
                server_time: 42,
                data: Bytes::from_static(b"Bpayload"),
            }
        );
    }

    #[test]
    fn parses_keepalive() {
        let mut raw = vec![b'k'];
        raw.extend_from_slice(&7u64.to_be_bytes());
        raw.extend_from_slice(&(-1i64).to_be_bytes());
        raw.push(1);
        let m = parse_copy_data(Bytes::from(raw)).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::Keepalive {
                wal_end: Lsn(7),
                server_time: -1,
                reply_requested: true
            }
        );
    }

    #[test]
    fn short_or_unknown_copy_data_is_a_protocol_error() {
        for raw in [&b""[..], b"w123", b"k1234", b"x"] {
            let e = parse_copy_data(Bytes::copy_from_slice(raw)).unwrap_err();
            assert!(matches!(e, ReplicationError::Protocol { .. }), "{e}");
        }
    }
}
