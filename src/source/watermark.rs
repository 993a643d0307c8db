//! Backfill watermarks (the DBLog algorithm, SPEC §3b): a low and a high mark written into
//! the WAL around the read of one chunk, with `pg_logical_emit_message`, non-transactional
//! and with the prefix `walhook`, so no table of the business database is written.
//!
//! A non-transactional message is decoded at its own WAL position, outside every
//! transaction: a transaction streamed between a chunk's low and high mark committed while
//! the chunk was being read, and may have changed a row the chunk holds with an older value.

use crate::pg::Lsn;
use crate::source::pgoutput::LogicalMessage;

/// The prefix of every logical message walhook writes (the heartbeat uses it too).
pub const PREFIX: &str = "walhook";

/// pgoutput's `messages` option, which streams logical messages, exists from this version.
pub const MESSAGES_SINCE_POSTGRES: u32 = 14;

/// What a content starts with, to tell a watermark from the heartbeat.
const CONTENT_PREFIX: &str = "backfill ";

/// Before or after the read of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Written before the chunk is read.
    Low,
    /// Written after the chunk is read.
    High,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Low => "low",
            Mark::High => "high",
        }
    }
}

/// One watermark: which chunk read it brackets (`token`, unique per read, so the marks of
/// a read a crash interrupted never close the window of a later read) and which side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// Names one read of one chunk.
    pub token: String,
    /// Low or high.
    pub mark: Mark,
}

impl Watermark {
    /// The message's content: `backfill low <token>`.
    pub fn content(&self) -> String {
        format!("{CONTENT_PREFIX}{} {}", self.mark.as_str(), self.token)
    }

    /// The watermark a logical message is, if it is one; the heartbeat and other writers'
    /// messages are not.
    pub fn parse(message: &LogicalMessage) -> Option<Watermark> {
        if message.transactional || message.prefix != PREFIX {
            return None;
        }
        let content = std::str::from_utf8(&message.content).ok()?;
        let rest = content.strip_prefix(CONTENT_PREFIX)?;
        let (mark, token) = rest.split_once(' ')?;
        let mark = match mark {
            "low" => Mark::Low,
            "high" => Mark::High,
            _ => return None,
        };
        (!token.is_empty()).then(|| Watermark {
            token: token.to_owned(),
            mark,
        })
    }

    /// Writes the watermark into the source's WAL; returns where.
    ///
    /// A high mark is flushed at once: a non-transactional message is only written to the
    /// WAL buffers, and the walsender sends nothing past the flushed position, so the chunk
    /// would wait for the next commit or for the WAL writer (`wal_writer_delay`, 200 ms by
    /// default). A transaction that takes an xid flushes everything before its commit
    /// record, on every supported version (`pg_logical_emit_message`'s own `flush` argument
    /// came with PostgreSQL 17).
    pub async fn emit(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Lsn, tokio_postgres::Error> {
        let emit = "SELECT pg_logical_emit_message(false, $1, $2)::text";
        let row = match self.mark {
            Mark::Low => client.query_one(emit, &[&PREFIX, &self.content()]).await?,
            Mark::High => {
                client
                    .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
                    .await?;
                let row = client.query_one(emit, &[&PREFIX, &self.content()]).await;
                let end = match &row {
                    Ok(_) => "SELECT txid_current(); COMMIT",
                    Err(_) => "ROLLBACK",
                };
                client.batch_execute(end).await?;
                row?
            }
        };
        Ok(row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO))
    }
}

/// The major version in a `server_version` (`15.4 (Debian 15.4-1)` → 15).
pub fn major_version(server_version: &str) -> Option<u32> {
    server_version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether a server of this `server_version` streams logical messages to walhook, which a
/// backfill needs; `true` when the version cannot be read (the option then says itself).
pub fn carries_watermarks(server_version: Option<&str>) -> bool {
    server_version
        .and_then(major_version)
        .is_none_or(|major| major >= MESSAGES_SINCE_POSTGRES)
}

/// [`carries_watermarks`] for a `server_version_num` (`150004` for 15.4).
pub fn carries_watermarks_num(server_version_num: u32) -> bool {
    server_version_num / 10_000 >= MESSAGES_SINCE_POSTGRES
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(transactional: bool, prefix: &str, content: &str) -> LogicalMessage {
        LogicalMessage {
            xid: None,
            transactional,
            lsn: Lsn(1),
            prefix: prefix.to_owned(),
            content: Bytes::from(content.to_owned()),
        }
    }

    #[test]
    fn a_watermark_reads_back_as_written_and_nothing_else_is_one() {
        let low = Watermark {
            token: "7-3-9f2c".into(),
            mark: Mark::Low,
        };
        let high = Watermark {
            mark: Mark::High,
            ..low.clone()
        };
        let cases: &[(LogicalMessage, Option<Watermark>)] = &[
            (message(false, PREFIX, &low.content()), Some(low.clone())),
            (message(false, PREFIX, &high.content()), Some(high.clone())),
            // The heartbeat shares the prefix.
            (message(false, PREFIX, "heartbeat"), None),
            // A transactional message is no watermark, whatever it says.
            (message(true, PREFIX, &low.content()), None),
            (message(false, "other", &low.content()), None),
            (message(false, PREFIX, "backfill middle 7-3"), None),
            (message(false, PREFIX, "backfill low "), None),
            (message(false, PREFIX, "backfill low"), None),
        ];
        for (message, expected) in cases {
            assert_eq!(&Watermark::parse(message), expected, "{message:?}");
        }
    }

    #[test]
    fn postgres_14_and_later_stream_watermarks() {
        for (version, carries) in [
            (Some("13.12 (Debian 13.12-1)"), false),
            (Some("14.0"), true),
            (Some("15.4 (Debian 15.4-1.pgdg120+1)"), true),
            (Some("17devel"), true),
            (None, true),
        ] {
            assert_eq!(carries_watermarks(version), carries, "{version:?}");
        }
        for (num, carries) in [(130_012, false), (140_000, true), (150_004, true)] {
            assert_eq!(carries_watermarks_num(num), carries, "{num}");
        }
    }
}
