//! The WebSocket opening handshake (RFC 6455 §4.2), done here rather than by axum's
//! `WebSocketUpgrade` so the session owns the raw connection afterwards: its writer sends
//! shared, pre-encoded frames straight to the socket, and nothing keeps a write buffer the size
//! of the largest frame for the connection's life.

use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::net::listener::{Stream, take_upgraded};

/// A valid WebSocket upgrade request.
pub struct WsRequest {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug)]
pub struct NotWebSocket {
    status: StatusCode,
    reason: &'static str,
}

impl NotWebSocket {
    fn new(status: StatusCode, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "oddsfeed WebSocket endpoint: connect with a WebSocket client to ws://<host>/ws ({})\n",
                self.reason
            ),
        )
            .into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsRequest {
    type Rejection = NotWebSocket;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotWebSocket::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "an upgrade is a GET",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(NotWebSocket::new(
                StatusCode::UPGRADE_REQUIRED,
                "missing Connection: upgrade / Upgrade: websocket",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotWebSocket::new(
                StatusCode::UPGRADE_REQUIRED,
                "only Sec-WebSocket-Version 13 is supported",
            ));
        }
        // A key is 16 random bytes in base64: 24 characters.
        let key = match parts.headers.get(header::SEC_WEBSOCKET_KEY) {
            Some(key) if key.len() == 24 => key.clone(),
            _ => {
                return Err(NotWebSocket::new(
                    StatusCode::BAD_REQUEST,
                    "missing or malformed Sec-WebSocket-Key",
                ));
            }
        };
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            NotWebSocket::new(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
            )
        })?;
        Ok(Self { key, on_upgrade })
    }
}

impl WsRequest {
    /// Answers 101 and returns the future that yields the client's stream (and any bytes it
    /// sent right behind the handshake) once hyper hands the connection over; it gives up
    /// after `wait`.
    /// `extensions`: the `Sec-WebSocket-Extensions` answer, when an extension was accepted.
    pub fn accept(
        self,
        wait: Duration,
        extensions: Option<HeaderValue>,
    ) -> (
        Response,
        impl Future<Output = std::io::Result<(Stream, Bytes)>> + Send + 'static,
    ) {
        let accept = derive_accept_key(self.key.as_bytes());
        let mut builder = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(extensions) = extensions {
            builder = builder.header(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
        }
        let response = builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        let on_upgrade = self.on_upgrade;
        let upgraded = async move {
            let upgraded = tokio::time::timeout(wait, on_upgrade)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
                .map_err(std::io::Error::other)?;
            take_upgraded(upgraded)
        };
        (response, upgraded)
    }
}
