//! Server frames as they go on the wire: the WebSocket header and the payload in one shared
//! buffer, encoded once (per room for odds frames) and handed to every member as a cheap
//! clone. Server frames are never masked, so the bytes are the same for every client.
//!
//! The header is written by tungstenite's `FrameHeader`; the JSON is serialised straight
//! behind reserved head room, so encoding costs no copy of the payload.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The longest header of an unmasked frame: 2 bytes and a 64-bit length.
const HEADROOM: usize = 10;

/// Longest close reason: a control frame payload is at most 125 bytes, 2 of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// One encoded frame: header and payload.
#[derive(Clone, PartialEq, Eq)]
pub struct WireFrame(Bytes);

impl WireFrame {
    /// A text frame carrying `message` as JSON.
    pub fn json(message: &impl Serialize) -> Self {
        let mut buf = vec![0u8; HEADROOM];
        if let Err(e) = serde_json::to_writer(&mut buf, message) {
            // Only non-string map keys or non-finite numbers can fail, and no server message
            // has them; say so rather than send half a message.
            buf.truncate(HEADROOM);
            buf.extend_from_slice(
                format!(r#"{{"type":"error","code":"bad_request","message":"internal serialisation error: {e}"}}"#)
                    .as_bytes(),
            );
        }
        Self::finish(buf, OpCode::Data(Data::Text))
    }

    /// A text frame carrying `text` (already JSON).
    pub fn text(text: &str) -> Self {
        Self::with_payload(OpCode::Data(Data::Text), text.as_bytes())
    }

    pub fn ping() -> Self {
        Self::with_payload(OpCode::Control(Control::Ping), b"")
    }

    /// A close frame with `code` and a reason cut to fit a control frame.
    pub fn close(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Self::with_payload(OpCode::Control(Control::Close), &payload)
    }

    fn with_payload(opcode: OpCode, payload: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(HEADROOM + payload.len());
        buf.resize(HEADROOM, 0);
        buf.extend_from_slice(payload);
        Self::finish(buf, opcode)
    }

    /// This frame's message compressed on its own (permessage-deflate: RSV1 set), for the
    /// members that negotiated the extension; a control frame stays as it is.
    pub fn deflated(&self) -> Self {
        let opcode = OpCode::from(self.0.first().copied().unwrap_or(0) & 0x0f);
        if !matches!(opcode, OpCode::Data(Data::Text | Data::Binary)) {
            return self.clone();
        }
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(&super::deflate::compress(self.payload()));
        Self::finish_with(buf, opcode, true)
    }

    /// Writes the header right in front of the payload that starts at `HEADROOM`.
    fn finish(buf: Vec<u8>, opcode: OpCode) -> Self {
        Self::finish_with(buf, opcode, false)
    }

    fn finish_with(mut buf: Vec<u8>, opcode: OpCode, rsv1: bool) -> Self {
        let len = (buf.len() - HEADROOM) as u64;
        let header = FrameHeader {
            is_final: true,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
        };
        let start = HEADROOM - header.len(len);
        let mut slot = &mut buf[start..HEADROOM];
        // Writing into a slice of exactly the header's length cannot fail.
        let _ = header.format(len, &mut slot);
        Self(Bytes::from(buf).slice(start..))
    }

    /// The whole frame, header included.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The payload (the JSON text of a text frame).
    pub fn payload(&self) -> &[u8] {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        self.0.get(header..).unwrap_or_default()
    }
}

impl fmt::Debug for WireFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WireFrame({} bytes: {:?})",
            self.len(),
            String::from_utf8_lossy(&self.payload()[..self.payload().len().min(80)])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Parses a frame back with tungstenite's own header parser.
    fn parse(frame: &WireFrame) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(frame.bytes().to_vec());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        let payload = cursor.into_inner()[start..].to_vec();
        assert_eq!(payload.len() as u64, len);
        (header, payload)
    }

    #[test]
    fn text_frames_of_every_length_class_parse_back() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let text = "x".repeat(len);
            let frame = WireFrame::text(&text);
            let (header, payload) = parse(&frame);
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(payload, text.as_bytes(), "length {len}");
            assert_eq!(frame.payload(), text.as_bytes());
        }
    }

    #[test]
    fn a_deflated_frame_has_rsv1_and_inflates_to_the_payload() {
        let frame = WireFrame::text(&"{\"seq\":1}".repeat(300));
        let z = frame.deflated();
        let (header, payload) = parse(&z);
        assert!(header.rsv1 && header.is_final);
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        assert!(payload.len() * 5 < frame.payload().len());
        let mut input = payload;
        input.extend_from_slice(&crate::broadcaster::deflate::TAIL);
        let mut out = Vec::with_capacity(frame.payload().len() + 64);
        flate2::Decompress::new(false)
            .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, frame.payload());
        assert_eq!(
            WireFrame::ping().deflated(),
            WireFrame::ping(),
            "control frames stay"
        );
    }

    #[test]
    fn json_frames_hold_the_serialised_message() {
        let message = serde_json::json!({"type": "pong", "serverTime": 5});
        let frame = WireFrame::json(&message);
        assert_eq!(frame.payload(), message.to_string().as_bytes());
        assert_eq!(parse(&frame).1, frame.payload());
    }

    #[test]
    fn close_frames_carry_the_code_and_a_cut_reason() {
        let (header, payload) = parse(&WireFrame::close(1013, "send queue full"));
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(&payload[..2], &1013u16.to_be_bytes());
        assert_eq!(&payload[2..], b"send queue full");
        let long = "é".repeat(100);
        let (_, payload) = parse(&WireFrame::close(1000, &long));
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
