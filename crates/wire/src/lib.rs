//! PostgreSQL protocol v3 messages: framing, typed frontend and backend
//! messages, SCRAM-SHA-256 and md5. No sockets, no policy.
//!
//! - **Framing** ([`split_frame`], [`startup::split_startup`]) cuts whole raw
//!   frames off a [`bytes::BytesMut`] without copying, so a proxy relays them
//!   as they came and decodes only the ones it must look at.
//! - **Messages** ([`frontend::FrontendMessage`], [`backend::BackendMessage`],
//!   [`startup::StartupPacket`]) decode lazily from a frame's body and borrow
//!   from it; repeated fields are [`List`]s that parse as they are iterated.
//!   Every message encodes by appending to a `BytesMut`.
//! - **Authentication**: [`scram`] (server, client, verifiers) and [`md5`].
//!
//! Decoding never panics, whatever the input: a malformed message is a
//! [`DecodeError`] naming the message and field. Text fields are `&str`: a
//! message whose text is not UTF-8 (a `client_encoding` other than UTF8) fails
//! to decode with [`DecodeError::InvalidUtf8`] and is best relayed raw, but for a
//! Query's or Parse's SQL, which `decode_escaped` reads through [`text::escape`]
//! and every encoder writes through [`text::unescape`].
//!
//! ```
//! use bytes::BytesMut;
//! use pgopt_wire::frontend::{FrontendMessage, Query};
//! use pgopt_wire::{split_frame, DEFAULT_MAX_MESSAGE_LEN};
//!
//! let mut buf = BytesMut::new();
//! Query { sql: "SELECT 1" }.encode(&mut buf)?;
//! let frame = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)?.expect("a whole frame");
//! assert_eq!(frame.frontend()?, FrontendMessage::Query(Query { sql: "SELECT 1" }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod authentication;
pub mod backend;
mod body;
mod constant_time;
mod copy;
mod error;
mod error_response;
mod format;
mod frame;
pub mod frontend;
mod list;
pub mod md5;
pub mod replication;
pub mod scram;
pub mod startup;
pub mod text;

pub use authentication::{Authentication, AUTHENTICATION, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
pub use constant_time::constant_time_eq;
pub use copy::{CopyData, CopyFail, CopyResponse};
pub use error::{AuthError, DecodeError, Direction, EncodeError, Tag};
pub use error_response::{
    field as error_field, sqlstate, ErrorBuilder, ErrorField, ErrorFields, Severity,
};
pub use format::{Format, Oid, Target, TransactionStatus};
pub use frame::{
    complete_frame_len, peek_header, split_frame, Frame, FrameHeader, DEFAULT_MAX_MESSAGE_LEN,
    HEADER_LEN, SMALL_MESSAGE_LEN,
};
pub use list::{List, ListItem, ListIter};
