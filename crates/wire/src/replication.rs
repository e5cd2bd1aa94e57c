//! Logical replication with the `pgoutput` plugin (protocol version 1): the CopyData
//! payloads of a replication stream, decoded as far as knowing which tables each
//! committed transaction changed — row contents are skipped — and the standby status
//! update a client sends back.

use bytes::{BufMut, BytesMut};

use crate::body::BodyReader;
use crate::error::{DecodeError, Tag};

/// A CopyData payload from the server on a replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage<'a> {
    /// `'w'`: WAL data starting at `start`; `data` is one pgoutput message.
    XLogData {
        start: u64,
        end: u64,
        data: &'a [u8],
    },
    /// `'k'`: the server's WAL end; `reply` asks for a status update now.
    Keepalive { end: u64, reply: bool },
}

impl<'a> StreamMessage<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let tag = Tag(payload.first().copied().unwrap_or(0));
        let mut r = BodyReader::new(tag, payload.get(1..).unwrap_or_default());
        match tag.0 {
            b'w' => {
                let start = r.u64("dataStart")?;
                let end = r.u64("walEnd")?;
                r.u64("sendTime")?;
                Ok(StreamMessage::XLogData {
                    start,
                    end,
                    data: r.rest(),
                })
            }
            b'k' => {
                let end = r.u64("walEnd")?;
                r.u64("sendTime")?;
                let reply = r.u8("replyRequested")? != 0;
                Ok(StreamMessage::Keepalive { end, reply })
            }
            _ => Err(r.invalid("replication message type", i64::from(tag.0))),
        }
    }
}

/// A pgoutput message, as far as invalidation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        lsn: u64,
        end: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        time: i64,
    },
    /// A relation's identity, sent before its first change in a session (and again
    /// after it changes).
    Relation {
        oid: u32,
        schema: &'a str,
        name: &'a str,
    },
    Insert {
        relation: u32,
    },
    Update {
        relation: u32,
    },
    Delete {
        relation: u32,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`), sent when the
    /// `messages` option is on (PostgreSQL 14 and later).
    Message {
        transactional: bool,
        lsn: u64,
        prefix: &'a str,
        content: &'a [u8],
    },
    /// Type, Origin…: nothing to invalidate.
    Other(u8),
}

impl<'a> Change<'a> {
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let tag = Tag(data.first().copied().unwrap_or(0));
        let mut r = BodyReader::new(tag, data.get(1..).unwrap_or_default());
        Ok(match tag.0 {
            b'B' => {
                let final_lsn = r.u64("final LSN")?;
                r.u64("commit time")?;
                Change::Begin {
                    final_lsn,
                    xid: r.u32("xid")?,
                }
            }
            b'C' => {
                r.u8("flags")?;
                let lsn = r.u64("commit LSN")?;
                let end = r.u64("end LSN")?;
                let time = r.u64("commit time")? as i64;
                Change::Commit { lsn, end, time }
            }
            b'R' => Change::Relation {
                oid: r.u32("relation OID")?,
                schema: r.cstr("namespace")?,
                name: r.cstr("relation name")?,
            },
            b'I' => Change::Insert {
                relation: r.u32("relation OID")?,
            },
            b'U' => Change::Update {
                relation: r.u32("relation OID")?,
            },
            b'D' => Change::Delete {
                relation: r.u32("relation OID")?,
            },
            b'T' => {
                let n = r.u32("relation count")?;
                r.u8("options")?;
                // Bounded by the bytes present: a bad count can't make a huge Vec.
                let mut relations = Vec::with_capacity((n as usize).min(r.remaining().len() / 4));
                for _ in 0..n {
                    relations.push(r.u32("relation OID")?);
                }
                Change::Truncate { relations }
            }
            b'M' => {
                let transactional = r.u8("flags")? & 1 == 1;
                let lsn = r.u64("message LSN")?;
                let prefix = r.cstr("message prefix")?;
                let len = r.u32("message length")?;
                Change::Message {
                    transactional,
                    lsn,
                    prefix,
                    content: r.bytes(len as usize, "message content")?,
                }
            }
            other => Change::Other(other),
        })
    }
}

/// Microseconds from 2000-01-01 (PostgreSQL's epoch) to `now`.
pub fn pg_epoch_micros(now: std::time::SystemTime) -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64 - (PG_EPOCH_UNIX_SECS as i64) * 1_000_000)
        .unwrap_or(0)
}

/// Appends a CopyData with a standby status update (`'r'`): WAL up to `flushed` is
/// processed and may be recycled by the server.
pub fn encode_status_update(out: &mut BytesMut, flushed: u64, now_micros: i64, reply: bool) {
    out.put_u8(b'd');
    out.put_u32(4 + 1 + 8 * 4 + 1);
    out.put_u8(b'r');
    out.put_u64(flushed); // written
    out.put_u64(flushed); // flushed
    out.put_u64(flushed); // applied
    out.put_i64(now_micros);
    out.put_u8(u8::from(reply));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_invalidation_needs_and_never_panics() {
        let mut relation = vec![b'R'];
        relation.extend_from_slice(&16384u32.to_be_bytes());
        relation.extend_from_slice(b"public\0items\0");
        relation.extend_from_slice(&[b'd', 0, 0]); // identity, no columns
        assert_eq!(
            Change::decode(&relation).unwrap(),
            Change::Relation {
                oid: 16384,
                schema: "public",
                name: "items"
            }
        );
        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&2u32.to_be_bytes());
        truncate.push(0);
        truncate.extend_from_slice(&1u32.to_be_bytes());
        truncate.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            Change::decode(&truncate).unwrap(),
            Change::Truncate {
                relations: vec![1, 2]
            }
        );
        // A count far beyond the bytes present is an error, not an allocation.
        let mut lying = vec![b'T'];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        lying.push(0);
        assert!(Change::decode(&lying).is_err());
        let mut message = vec![b'M', 0];
        message.extend_from_slice(&0x10u64.to_be_bytes());
        message.extend_from_slice(b"pgopt.stream\0");
        message.extend_from_slice(&3u32.to_be_bytes());
        message.extend_from_slice(b"abc");
        assert_eq!(
            Change::decode(&message).unwrap(),
            Change::Message {
                transactional: false,
                lsn: 0x10,
                prefix: "pgopt.stream",
                content: b"abc",
            }
        );
        // Content longer than the bytes present: an error.
        let length_end = message.len() - 4;
        message[length_end] = 9;
        assert!(Change::decode(&message).is_err());
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let _ = Change::decode(&junk);
            let _ = StreamMessage::decode(&junk);
        }
        let mut out = BytesMut::new();
        encode_status_update(&mut out, 0x10, 5, false);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(out[5], b'r');
    }
}
