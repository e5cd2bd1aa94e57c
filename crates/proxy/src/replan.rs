//! After a schema change, a server statement whose result type changed fails its next
//! Bind with "cached plan must not change result type" (0A000). In transaction mode
//! pgopt prepares such statements again instead of letting the client hit that error
//! on one server connection after another:
//!
//! - the pool remembers the invalidated statement, and every connection closes and
//!   re-prepares its copy before the next use (`Pool::invalidate_plan`);
//! - a batch that failed this way is run again, transparently, when that is safe: it
//!   began outside a transaction, it is the only batch in flight, and it asks for the
//!   portal's row description (libpq's `PQexecPrepared`, psycopg, pgbench do) or the
//!   statement's (a driver preparing a statement a server connection already had from
//!   another client: tokio-postgres, asyncpg, pgjdbc, postgres.js), so the client
//!   learns the new result shape with the rows;
//! - a client that would get rows of a new shape without asking for their description
//!   gets the 0A000 error PostgreSQL itself would send, until it prepares the
//!   statement again.

use bytes::{Bytes, BytesMut};
use pgopt_wire::{peek_header, sqlstate, ErrorBuilder, Frame, Severity};

use crate::stats::error_field;

/// Batches larger than this are not kept for a second run.
const MAX_REPLAY_BYTES: usize = 16 * 1024;

/// The client messages of one extended-query batch that starts with a Bind or a
/// Describe of a statement, kept until its ReadyForQuery in case it has to run again.
#[derive(Debug, Default)]
pub struct Replay {
    bytes: BytesMut,
    complete: bool,
    /// A Describe of a portal, or the batch starts with a Describe of a statement
    /// (the one whose copy may be stale): the client learns the new result shape
    /// from the run again.
    describes: bool,
    /// A Bind or an Execute was kept.
    runs: bool,
}

impl Replay {
    /// An empty batch kept in `buf` (cleared), so the buffer of one batch serves the
    /// next: no allocation per transaction.
    pub fn with_buffer(mut buf: BytesMut) -> Replay {
        buf.clear();
        Replay {
            bytes: buf,
            ..Replay::default()
        }
    }

    /// Adds a client message; `false` when the batch cannot be run again (a message
    /// other than Bind/Describe/Execute/Flush/Sync, or too many bytes).
    pub fn record(&mut self, frame: &Frame) -> bool {
        if self.complete {
            return true;
        }
        match frame.tag() {
            b'B' | b'E' => self.runs = true,
            b'H' => {}
            b'D' => {
                let first = self.bytes.is_empty();
                self.describes |= first || frame.body().first() == Some(&b'P');
            }
            b'S' => self.complete = true,
            _ => return false,
        }
        // (Measured before the copy: a large message is not copied only to go.)
        if self.bytes.len() + frame.as_bytes().len() > MAX_REPLAY_BYTES {
            return false;
        }
        self.bytes.extend_from_slice(frame.as_bytes());
        true
    }

    /// Complete up to its Sync (what follows is not kept).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Complete up to its Sync, and the client will see the new row description.
    pub fn can_run_again(&self) -> bool {
        self.complete && self.describes
    }

    /// Not complete, and only a Describe of a statement (and Flushes) so far.
    pub fn only_described(&self) -> bool {
        !self.complete && self.describes && !self.runs
    }

    pub fn into_bytes(self) -> BytesMut {
        self.bytes
    }
}

/// Whether an ErrorResponse body is the server's "cached plan must not change result
/// type" (by SQLSTATE and the reporting routine: the message text is translated).
pub fn is_plan_invalidated(body: &[u8]) -> bool {
    error_field(body, b'C') == Some(sqlstate::FEATURE_NOT_SUPPORTED.as_bytes())
        && error_field(body, b'R') == Some(b"RevalidateCachedQuery")
}

/// Whether the client messages in `buf`, up to the next Sync, describe a portal.
pub fn batch_describes_portal(buf: &[u8], max_len: u32) -> bool {
    let mut pos = 0;
    while let Ok(Some(header)) = peek_header(&buf[pos..], max_len) {
        let end = pos + header.frame_len();
        match header.tag {
            b'S' => return false,
            b'D' if buf.get(pos + 5) == Some(&b'P') => return true,
            _ => {}
        }
        if end > buf.len() {
            return false;
        }
        pos = end;
    }
    false
}

/// The error PostgreSQL sends for a statement whose result shape changed.
pub fn plan_changed_error() -> Option<Bytes> {
    let mut out = BytesMut::new();
    ErrorBuilder::new(
        Severity::Error,
        sqlstate::FEATURE_NOT_SUPPORTED,
        "cached plan must not change result type",
    )
    .hint("The table changed since the statement was prepared: prepare it again (pgopt then prepares it again on every server connection).")
    // PostgreSQL's, which drivers look for: pgjdbc prepares the statement again and
    // retries on it.
    .routine("RevalidateCachedQuery")
    .encode_error(&mut out)
    .ok()?;
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgopt_wire::split_frame;

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        std::iter::from_fn(|| split_frame(&mut buf, 1 << 20).unwrap()).collect()
    }

    const BIND: &[u8] = b"B\0\0\0\x0e\0s1\0\0\0\0\0\0\0";
    const DESCRIBE_PORTAL: &[u8] = b"D\0\0\0\x06P\0";
    const EXECUTE: &[u8] = b"E\0\0\0\x09\0\0\0\0\0";
    const SYNC: &[u8] = b"S\0\0\0\x04";

    #[test]
    fn a_bind_describe_execute_sync_batch_can_run_again() {
        let batch = [BIND, DESCRIBE_PORTAL, EXECUTE, SYNC].concat();
        let mut replay = Replay::default();
        for f in frames(&batch) {
            assert!(replay.record(&f));
        }
        assert!(replay.can_run_again());
        assert_eq!(&replay.into_bytes()[..], &batch[..]);
        assert!(batch_describes_portal(&batch, 1 << 20));
    }

    #[test]
    fn a_batch_from_a_statement_description_can_run_again() {
        const DESCRIBE_STATEMENT: &[u8] = b"D\0\0\0\x08Ss1\0";
        let batch = [DESCRIBE_STATEMENT, BIND, EXECUTE, SYNC].concat();
        let mut replay = Replay::default();
        for f in frames(&batch) {
            assert!(replay.record(&f));
        }
        assert!(replay.can_run_again());
        // Described later, another statement may be: the Bind's rows would come in
        // a shape the client was not told.
        let mut replay = Replay::default();
        for f in frames(&[BIND, EXECUTE, DESCRIBE_STATEMENT, SYNC].concat()) {
            assert!(replay.record(&f));
        }
        assert!(!replay.can_run_again());
    }

    #[test]
    fn without_a_portal_description_or_a_sync_it_cannot() {
        let mut replay = Replay::default();
        for f in frames(&[BIND, EXECUTE, SYNC].concat()) {
            assert!(replay.record(&f));
        }
        assert!(!replay.can_run_again());
        assert!(!batch_describes_portal(
            &[BIND, EXECUTE, SYNC, DESCRIBE_PORTAL].concat(),
            1 << 20
        ));
        let mut replay = Replay::default();
        for f in frames(&[BIND, DESCRIBE_PORTAL, EXECUTE].concat()) {
            assert!(replay.record(&f));
        }
        assert!(!replay.can_run_again());
        let parse = b"P\0\0\0\x09\0x\0\0\0";
        assert!(!Replay::default().record(&frames(parse)[0]));
    }

    #[test]
    fn the_invalidated_plan_error_is_known_by_code_and_routine() {
        let body =
            b"SERROR\0C0A000\0Mcached plan must not change result type\0RRevalidateCachedQuery\0\0";
        assert!(is_plan_invalidated(body));
        let other = b"SERROR\0C0A000\0Mnot supported\0Rsomething\0\0";
        assert!(!is_plan_invalidated(other));
    }
}
