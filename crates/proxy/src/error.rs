use std::io;

/// Why a client session or a server connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("i/o with {peer}: {source}")]
    Io {
        peer: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("malformed message from the {peer}: {source}")]
    Decode {
        peer: &'static str,
        #[source]
        source: pgopt_wire::DecodeError,
    },
    #[error("encoding a message: {0}")]
    Encode(#[from] pgopt_wire::EncodeError),
    #[error("authentication: {0}")]
    Auth(#[from] pgopt_wire::AuthError),
    #[error("server {server}: {message}")]
    Server { server: String, message: String },
    /// The server answered the log-in with an ErrorResponse.
    #[error("server {server}: {message} ({code})")]
    Refused {
        server: String,
        /// Its SQLSTATE.
        code: String,
        message: String,
    },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl ProxyError {
    pub(crate) fn client_io(source: io::Error) -> Self {
        ProxyError::Io {
            peer: "client",
            source,
        }
    }

    pub(crate) fn server_io(source: io::Error) -> Self {
        ProxyError::Io {
            peer: "server",
            source,
        }
    }
}
