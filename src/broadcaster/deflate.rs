//! permessage-deflate (RFC 7692), server side: the negotiation, and compressing a frame.
//!
//! The server always declares `server_no_context_takeover` (each message is compressed on its
//! own), which is what lets a room frame be compressed **once** and the same bytes go to every
//! member that negotiated the extension. It also asks for `client_no_context_takeover`, so a
//! client message is inflated on its own and no connection keeps a 32 KiB window
//! ([`super::inflate`]). A client that insists on a smaller server window
//! (`server_max_window_bits` below 15) or sends a parameter we do not know gets no extension:
//! the connection works uncompressed.

use axum::http::{HeaderMap, HeaderValue, header};
use flate2::{Compress, Compression, FlushCompress};

/// The response to an accepted offer.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The 4 bytes a sync flush ends with, which the sender removes (RFC 7692 §7.2.1).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The response when the accepted offer named `server_max_window_bits` (accepting that
/// parameter means echoing it, RFC 7692 §7.1.2.1).
pub const RESPONSE_WITH_WINDOW: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// `Some(response header)` when one of the client's offers can be accepted.
pub fn negotiate(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(acceptable)
        .map(HeaderValue::from_static)
}

/// The response to one offer (`permessage-deflate; param; param=value`), if it can be
/// accepted as we run the extension.
fn acceptable(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let ok = match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            // We inflate with the full window, whatever the client's is.
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => window_bits(v).is_some(),
            // We compress with a 32 KiB window (15 bits) only.
            ("server_max_window_bits", Some(v)) => window_bits(v) == Some(15),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    Some(if seen.contains(&"server_max_window_bits") {
        RESPONSE_WITH_WINDOW
    } else {
        RESPONSE
    })
}

/// A value as is, or without one balanced pair of double quotes; `None` when unbalanced.
fn unquote(v: &str) -> Option<&str> {
    match (v.starts_with('"'), v.ends_with('"')) {
        (true, true) if v.len() >= 2 => Some(&v[1..v.len() - 1]),
        (false, false) => Some(v),
        _ => None,
    }
}

/// 8 to 15 written as plain digits without a leading zero (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// `payload` compressed as one message (raw DEFLATE, sync flush, tail removed).
pub fn compress(payload: &[u8]) -> Vec<u8> {
    let mut z = Compress::new(Compression::default(), false);
    // Deflate never grows data by more than a few bytes per 16 KiB block: one call is the rule.
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 1024 + 64);
    loop {
        let (before_in, before_out) = (z.total_in(), z.total_out());
        let consumed = usize::try_from(before_in).unwrap_or(payload.len());
        if out.capacity() == out.len() {
            out.reserve(1024);
        }
        // Only a misuse of the stream can fail, and a fresh compressor is not misused.
        if z.compress_vec(
            &payload[consumed.min(payload.len())..],
            &mut out,
            FlushCompress::Sync,
        )
        .is_err()
        {
            break;
        }
        let done = z.total_in() as usize >= payload.len() && out.len() < out.capacity();
        let stuck = z.total_in() == before_in && z.total_out() == before_out;
        if done || stuck {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn offer(value: &str) -> Option<HeaderValue> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(value).unwrap(),
        );
        negotiate(&headers)
    }

    #[test]
    fn browser_and_library_offers_are_accepted() {
        for value in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits=15; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=\"10\"",
        ] {
            assert_eq!(offer(value).unwrap(), RESPONSE, "{value}");
        }
        // Accepting server_max_window_bits means echoing it.
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=15").unwrap(),
            RESPONSE_WITH_WINDOW
        );
    }

    #[test]
    fn offers_we_cannot_honour_get_no_extension() {
        for value in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; unknown_param",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=99",
            "permessage-deflate; client_max_window_bits=+15",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=15\"",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert!(offer(value).is_none(), "{value}");
        }
        assert!(negotiate(&HeaderMap::new()).is_none());
    }

    #[test]
    fn compressed_messages_inflate_back_on_their_own() {
        for text in ["", "x", &"{\"type\":\"odds\",\"seq\":1}".repeat(500)] {
            let z = compress(text.as_bytes());
            assert!(!z.ends_with(&TAIL));
            let mut input = z.clone();
            input.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(text.len() + 64);
            Decompress::new(false)
                .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, text.as_bytes());
        }
        let big = "{\"id\":\"e1\",\"version\":3}".repeat(1000);
        assert!(
            compress(big.as_bytes()).len() * 10 < big.len(),
            "JSON compresses well"
        );
    }
}
