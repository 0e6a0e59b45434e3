//! A logical replication session (`replication=database`): slot commands, then
//! `START_REPLICATION ... LOGICAL` with pgoutput and the CopyBoth stream it opens.
//!
//! The login and authentication are `db::wire`'s; after startup this module reads the
//! protocol's frames itself, because postgres-protocol 0.6 does not parse CopyBothResponse.
//! Inside the stream PostgreSQL sends XLogData ('w') and primary keepalives ('k'); we answer
//! with standby status updates ('r') carrying the position whose changes were fanned out,
//! which is what lets the slot forget them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::db::quote_ident;
use crate::db::wire::{WireConfig, WireConn, WireError};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A failure of the session: PostgreSQL's SQLSTATE and message, or a broken connection.
#[derive(Debug)]
pub(super) enum ReplError {
    Db { code: String, message: String },
    Io(String),
}

impl std::fmt::Display for ReplError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplError::Db { code, message } => write!(f, "{message} ({code})"),
            ReplError::Io(s) => f.write_str(s),
        }
    }
}

impl ReplError {
    pub(super) fn code(&self) -> Option<&str> {
        match self {
            ReplError::Db { code, .. } => Some(code),
            ReplError::Io(_) => None,
        }
    }
}

impl From<std::io::Error> for ReplError {
    fn from(e: std::io::Error) -> Self {
        ReplError::Io(e.to_string())
    }
}

impl From<WireError> for ReplError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Db(d) => ReplError::Db {
                code: d.code,
                message: d.message,
            },
            WireError::Io(s) => ReplError::Io(s),
        }
    }
}

/// What the stream brought.
pub(super) enum Frame {
    /// One pgoutput message starting at WAL position `start`.
    XLogData { start: u64, data: Bytes },
    /// The server's position; `reply` asks for a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

pub(super) struct ReplConn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub(super) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub(super) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn now_pg_us() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - PG_EPOCH_OFFSET_US
}

impl ReplConn {
    pub(super) async fn connect(cfg: &WireConfig) -> Result<ReplConn, ReplError> {
        let conn = WireConn::connect(&cfg.clone().replication("oxibase realtime")).await?;
        let (stream, rbuf) = conn.into_parts();
        Ok(ReplConn {
            stream,
            rbuf,
            wbuf: BytesMut::with_capacity(64),
        })
    }

    /// The next complete backend message (tag, body), reading as needed. Cancel-safe: a
    /// partial message stays in the buffer.
    async fn message(&mut self) -> Result<(u8, Bytes), ReplError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len = u32::from_be_bytes(self.rbuf[1..5].try_into().expect("4")) as usize;
                if len < 4 {
                    return Err(ReplError::Io("malformed message from the database".into()));
                }
                if self.rbuf.len() > len {
                    let mut m = self.rbuf.split_to(len + 1).freeze();
                    let tag = m.get_u8();
                    m.advance(4);
                    return Ok((tag, m));
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            } else if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                // Large reads: whatever PostgreSQL has sent arrives at once, so the
                // transactions in it are fanned out (and RLS-checked) together.
                self.rbuf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplError::Io("the database closed the connection".into()));
            }
        }
    }

    /// Is a complete message already read (no waiting for the next one)?
    pub(super) fn has_buffered(&self) -> bool {
        self.rbuf.len() >= 5
            && self.rbuf.len() > u32::from_be_bytes(self.rbuf[1..5].try_into().expect("4")) as usize
    }

    async fn send(&mut self) -> Result<(), ReplError> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    fn put_query(&mut self, sql: &str) {
        self.wbuf.put_u8(b'Q');
        self.wbuf.put_u32((4 + sql.len() + 1) as u32);
        self.wbuf.put_slice(sql.as_bytes());
        self.wbuf.put_u8(0);
    }

    /// A simple-protocol command; its rows as text (NULL as `None`).
    pub(super) async fn simple(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        self.put_query(sql);
        self.send().await?;
        let mut rows = vec![];
        let mut error = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'D' => rows.push(data_row(body)?),
                b'E' if error.is_none() => error = Some(error_of(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// A persistent logical slot with pgoutput; its consistent point. Waits for the
    /// transactions running in the cluster (as any slot creation does).
    pub(super) async fn create_slot(&mut self, slot: &str) -> Result<u64, ReplError> {
        let rows = self
            .simple(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(slot)
            ))
            .await?;
        rows.first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|l| parse_lsn(&l))
            .ok_or_else(|| ReplError::Io("CREATE_REPLICATION_SLOT answered no position".into()))
    }

    pub(super) async fn drop_slot(&mut self, slot: &str) -> Result<(), ReplError> {
        self.simple(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot)))
            .await
            .map(drop)
    }

    /// Start streaming the slot's changes from its confirmed position, for the tables of
    /// the `supabase_realtime` publication.
    pub(super) async fn start(&mut self, slot: &str) -> Result<(), ReplError> {
        self.put_query(&format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names '\"supabase_realtime\"')",
            quote_ident(slot)
        ));
        self.send().await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                // CopyBothResponse: the stream is open.
                b'W' => return Ok(()),
                b'E' => {
                    let e = error_of(&body);
                    // Drain to ReadyForQuery so the error is the whole story.
                    while self.message().await?.0 != b'Z' {}
                    return Err(e);
                }
                _ => {}
            }
        }
    }

    /// The next frame of the stream. Cancel-safe.
    pub(super) async fn frame(&mut self) -> Result<Frame, ReplError> {
        loop {
            let (tag, mut body) = self.message().await?;
            match tag {
                b'd' if !body.is_empty() => match body.get_u8() {
                    b'w' if body.len() >= 24 => {
                        let start = body.get_u64();
                        let _wal_end = body.get_u64();
                        let _sent_at = body.get_i64();
                        return Ok(Frame::XLogData { start, data: body });
                    }
                    b'k' if body.len() >= 17 => {
                        let wal_end = body.get_u64();
                        let _sent_at = body.get_i64();
                        let reply = body.get_u8() == 1;
                        return Ok(Frame::Keepalive { wal_end, reply });
                    }
                    _ => {}
                },
                b'E' => return Err(error_of(&body)),
                b'c' => {
                    return Err(ReplError::Io(
                        "the database ended the replication stream".into(),
                    ))
                }
                _ => {}
            }
        }
    }

    /// Standby status update: everything up to `lsn` has been handled (written, flushed and
    /// applied alike), so the slot's confirmed position may move there.
    pub(super) async fn status(&mut self, lsn: u64) -> Result<(), ReplError> {
        self.wbuf.put_u8(b'd');
        self.wbuf.put_u32(4 + 1 + 8 * 4 + 1);
        self.wbuf.put_u8(b'r');
        self.wbuf.put_u64(lsn);
        self.wbuf.put_u64(lsn);
        self.wbuf.put_u64(lsn);
        self.wbuf.put_i64(now_pg_us());
        self.wbuf.put_u8(0);
        self.send().await
    }
}

fn data_row(mut b: Bytes) -> Result<Vec<Option<String>>, ReplError> {
    let short = || ReplError::Io("truncated data row".into());
    if b.len() < 2 {
        return Err(short());
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(short());
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(short());
        }
        row.push(Some(String::from_utf8_lossy(&b.split_to(len)).into_owned()));
    }
    Ok(row)
}

fn error_of(body: &[u8]) -> ReplError {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|c| *c == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    ReplError::Db { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn error_fields_and_rows() {
        let e = error_of(b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0");
        assert_eq!(e.code(), Some("42704"));
        assert!(e.to_string().contains("does not exist"));
        let mut b = BytesMut::new();
        b.put_i16(2);
        b.put_i32(1);
        b.put_slice(b"a");
        b.put_i32(-1);
        assert_eq!(
            data_row(b.freeze()).unwrap(),
            vec![Some("a".to_string()), None]
        );
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(5);
        assert!(data_row(b.freeze()).is_err());
    }
}
