//! The network edge, before anything is a WebSocket or an API call.
//!
//! - [`listener`]: binds with the configured backlog, accepts (backing off on EMFILE), and
//!   runs each connection through hyper with a header timeout, an idle timeout and a cap on
//!   connections that have not upgraded; optional TLS.
//! - [`client_addr`]: the client address of a request, believing forwarding headers only from
//!   `TRUSTED_PROXIES`.
//! - [`open_files`]: raises the descriptor limit and fits the connection caps into it.
//! - [`tls`]: loads `TLS_CERT`/`TLS_KEY` into a rustls acceptor.
//! - [`shared_tcp`]: one TCP stream read and written through shared handles (a session's
//!   reader, its writer and the fan-out threads).

pub mod client_addr;
pub mod listener;
pub mod open_files;
pub mod shared_tcp;
pub mod tls;

pub use client_addr::{ClientAddr, TrustedProxies};
