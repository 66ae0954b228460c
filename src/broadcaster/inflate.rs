//! The read side of permessage-deflate: client messages that arrive compressed (RSV1 set on
//! their first frame) are inflated here, before tungstenite (which knows no extension) parses
//! them, and handed on as one ordinary frame. Every other frame passes through untouched.
//!
//! The client was told `client_no_context_takeover` ([`super::deflate`]), so each message is
//! inflated on its own. Bounds: a compressed message (its frames together) and what it
//! inflates to are held to the hard frame limit; past it the frame handed on is one that
//! tungstenite refuses with 1009. Data that does not inflate, RSV1 on a continuation or control
//! frame, or a new message inside a compressed one are handed on as a frame with RSV1 set,
//! which tungstenite refuses with 1002.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, ReadBuf};

use super::deflate::TAIL;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const MASKED: u8 = 0x80;

/// A compressed message being collected.
struct Pending {
    opcode: u8,
    payload: Vec<u8>,
}

/// Client frames in, client frames with every message uncompressed out.
pub struct InflateRead<R> {
    inner: R,
    /// Bytes read from the socket and not yet handed on.
    raw: BytesMut,
    /// Bytes ready for tungstenite.
    out: BytesMut,
    /// Payload bytes of an uncompressed frame still to pass through as they come.
    passing: u64,
    /// Inside a fragmented message: whether it is compressed.
    fragmented: Option<bool>,
    pending: Option<Pending>,
    /// Largest compressed message accepted (the session's hard frame limit).
    limit: usize,
    /// Most bytes a message is inflated to (the session's message limit).
    message_limit: usize,
    /// The stream ended or a frame was refused: pass everything through from now on.
    done: bool,
}

impl<R> InflateRead<R> {
    /// `leftover`: bytes that arrived right behind the handshake. `limit`: the largest
    /// compressed message (beyond: 1009); `message_limit`: the most a message is inflated to
    /// (beyond: a message the session refuses as too large).
    pub fn new(inner: R, leftover: &[u8], limit: usize, message_limit: usize) -> Self {
        Self {
            inner,
            raw: BytesMut::from(leftover),
            out: BytesMut::new(),
            passing: 0,
            fragmented: None,
            pending: None,
            limit,
            message_limit,
            done: false,
        }
    }

    /// A frame header that tungstenite refuses with 1002 (RSV1 without the extension's
    /// meaning).
    fn refuse_protocol(&mut self) {
        self.out
            .extend_from_slice(&[FIN | RSV1 | 0x1, MASKED, 0, 0, 0, 0]);
        self.done = true;
    }

    /// A frame header longer than the limit: tungstenite refuses it with 1009.
    fn refuse_size(&mut self) {
        push_header(&mut self.out, 0x1, self.limit as u64 + 1);
        self.done = true;
    }

    /// Moves what can be decided from `raw` to `out`. False when more bytes are needed.
    fn step(&mut self) -> bool {
        if self.done {
            if self.raw.is_empty() {
                return false;
            }
            let all = self.raw.split();
            self.out.extend_from_slice(&all);
            return true;
        }
        if self.passing > 0 {
            if self.raw.is_empty() {
                return false;
            }
            let n = self
                .raw
                .len()
                .min(usize::try_from(self.passing).unwrap_or(usize::MAX));
            let part = self.raw.split_to(n);
            self.out.extend_from_slice(&part);
            self.passing -= n as u64;
            return true;
        }
        let Some((header_len, payload_len, masked)) = parse_header(&self.raw) else {
            return false;
        };
        let (b0, opcode) = (self.raw[0], self.raw[0] & 0x0f);
        let fin = b0 & FIN != 0;
        let rsv1 = b0 & RSV1 != 0;
        let control = opcode & 0x08 != 0;
        let compressed = if control {
            false
        } else if opcode == 0 {
            // A continuation: RSV1 belongs on the first frame only.
            if rsv1 {
                self.refuse_protocol();
                return true;
            }
            self.fragmented == Some(true)
        } else {
            if self.fragmented.is_some() {
                // A new message inside a fragmented one: let tungstenite refuse it as ever,
                // unless we swallowed the start of a compressed one (it could not tell).
                if self.pending.is_some() {
                    self.refuse_protocol();
                    return true;
                }
            }
            rsv1
        };
        if !compressed {
            // Through as it is (tungstenite checks masks, lengths, RSV on control frames).
            if !control && opcode != 0 {
                self.fragmented = (!fin).then_some(false);
            } else if opcode == 0 && fin {
                self.fragmented = None;
            }
            let header = self.raw.split_to(header_len);
            self.out.extend_from_slice(&header);
            self.passing = payload_len;
            return true;
        }
        // A frame of a compressed message: needs all its payload, within the limit. RSV2 and
        // RSV3 mean nothing here either.
        let collected = self.pending.as_ref().map_or(0, |p| p.payload.len()) as u64;
        if !masked || b0 & 0x30 != 0 {
            self.refuse_protocol();
            return true;
        }
        // Subtraction, not addition: a length near 2^64 must not wrap past the check.
        if payload_len > (self.limit as u64).saturating_sub(collected) {
            self.refuse_size();
            return true;
        }
        let Some(frame_len) = usize::try_from(payload_len)
            .ok()
            .and_then(|n| n.checked_add(header_len))
        else {
            self.refuse_size();
            return true;
        };
        if self.raw.len() < frame_len {
            return false;
        }
        let mut frame = self.raw.split_to(frame_len);
        let key = [
            frame[header_len - 4],
            frame[header_len - 3],
            frame[header_len - 2],
            frame[header_len - 1],
        ];
        frame.advance(header_len);
        for (i, b) in frame.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        let pending = self.pending.get_or_insert_with(|| Pending {
            opcode,
            payload: Vec::new(),
        });
        pending.payload.extend_from_slice(&frame);
        if !fin {
            self.fragmented = Some(true);
            return true;
        }
        self.fragmented = None;
        let Some(Pending { opcode, payload }) = self.pending.take() else {
            return true;
        };
        match inflate(&payload, self.message_limit) {
            Inflated::Ok(message) => {
                push_header(&mut self.out, opcode, message.len() as u64);
                self.out.extend_from_slice(&message);
            }
            // Past the message limit, the session sees a message one byte too long (spaces)
            // and answers `too_large` as it does for an uncompressed one: a few compressed
            // bytes never buy more than `message_limit` of inflating.
            Inflated::TooBig => {
                let len = self.message_limit.saturating_add(1);
                push_header(&mut self.out, opcode, len as u64);
                self.out.resize(self.out.len() + len, b' ');
            }
            Inflated::Invalid => self.refuse_protocol(),
        }
        true
    }
}

/// A masked client frame header with a zero key (so the payload goes as it is).
fn push_header(out: &mut BytesMut, opcode: u8, len: u64) {
    out.extend_from_slice(&[FIN | opcode]);
    match len {
        0..=125 => out.extend_from_slice(&[MASKED | len as u8]),
        126..=65_535 => {
            out.extend_from_slice(&[MASKED | 126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[MASKED | 127]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
}

/// (header length, payload length, masked) once the whole header is in `raw`.
fn parse_header(raw: &[u8]) -> Option<(usize, u64, bool)> {
    let b1 = *raw.get(1)?;
    let masked = b1 & MASKED != 0;
    let (ext, len) = match b1 & 0x7f {
        126 => (
            2,
            u64::from(u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?])),
        ),
        127 => {
            let bytes: [u8; 8] = raw.get(2..10)?.try_into().ok()?;
            (8, u64::from_be_bytes(bytes))
        }
        n => (0, u64::from(n)),
    };
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    (raw.len() >= header_len).then_some((header_len, len, masked))
}

enum Inflated {
    Ok(Vec<u8>),
    TooBig,
    Invalid,
}

/// Inflates one message (its own window), at most `limit` bytes.
fn inflate(payload: &[u8], limit: usize) -> Inflated {
    let mut input = Vec::with_capacity(payload.len() + TAIL.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&TAIL);
    let cap = limit.saturating_add(1);
    let mut z = Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len().saturating_mul(4).clamp(64.min(cap), cap));
    loop {
        let consumed = usize::try_from(z.total_in()).unwrap_or(input.len());
        let before_out = z.total_out();
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Inflated::TooBig;
            }
            // Exactly: never past one byte over the limit.
            out.reserve_exact(out.capacity().clamp(64, cap - out.len()));
        }
        let status = z.decompress_vec(
            &input[consumed.min(input.len())..],
            &mut out,
            FlushDecompress::Sync,
        );
        if out.len() > limit {
            return Inflated::TooBig;
        }
        match status {
            Ok(Status::StreamEnd) => break,
            Ok(_) => {}
            Err(_) => return Inflated::Invalid,
        }
        if z.total_in() as usize >= input.len() && out.len() < out.capacity() {
            break;
        }
        if usize::try_from(z.total_in()).unwrap_or(input.len()) == consumed
            && z.total_out() == before_out
            && out.len() < out.capacity()
        {
            // No progress with room to write: the input is broken.
            return Inflated::Invalid;
        }
    }
    Inflated::Ok(out)
}

impl<R: AsyncRead + Unpin> AsyncRead for InflateRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.step() {
                continue;
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The end of the stream: whatever is left goes on as it is.
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.done = true;
                continue;
            }
            this.raw.extend_from_slice(read.filled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcaster::deflate::compress;
    use tokio::io::AsyncReadExt;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(MASKED | n as u8),
            n if n < 65_536 => {
                out.push(MASKED | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(MASKED | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    async fn through(input: Vec<u8>, limit: usize) -> Vec<u8> {
        let (head, rest) = input.split_at(input.len().min(3));
        let mut reader = InflateRead::new(rest, head, limit, limit / 16);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        out
    }

    /// The (opcode, rsv1, payload) of each frame in `bytes` (masked with a zero key or not).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((header_len, len, masked)) = parse_header(bytes) {
            let key = if masked {
                bytes[header_len - 4..header_len].to_vec()
            } else {
                vec![0; 4]
            };
            let end = header_len + len as usize;
            let payload = bytes[header_len..end.min(bytes.len())]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            out.push((bytes[0] & 0x0f, bytes[0] & RSV1 != 0, payload));
            bytes = &bytes[end.min(bytes.len())..];
        }
        out
    }

    #[tokio::test]
    async fn a_compressed_message_comes_out_plain_and_others_pass_untouched() {
        let text = br#"{"type":"subscribe","room":"sport:all"}"#;
        let mut input = frame(FIN | 0x9, b"p");
        input.extend(frame(FIN | RSV1 | 0x1, &compress(text)));
        input.extend(frame(FIN | 0x1, b"plain"));
        let out = through(input, 1 << 16).await;
        assert_eq!(
            frames(&out),
            vec![
                (0x9, false, b"p".to_vec()),
                (0x1, false, text.to_vec()),
                (0x1, false, b"plain".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_fragmented_compressed_message_with_a_ping_between_is_one_frame_after_the_ping() {
        let text = "{\"type\":\"rooms\"}".repeat(50);
        let z = compress(text.as_bytes());
        let (a, b) = z.split_at(z.len() / 2);
        let mut input = frame(RSV1 | 0x1, a);
        input.extend(frame(FIN | 0x9, b"x"));
        input.extend(frame(FIN, b));
        let out = through(input, 1 << 16).await;
        assert_eq!(
            frames(&out),
            vec![(0x9, false, b"x".to_vec()), (0x1, false, text.into_bytes())]
        );
    }

    #[tokio::test]
    async fn broken_data_and_misplaced_rsv1_become_protocol_errors() {
        for input in [
            frame(FIN | RSV1 | 0x1, b"\xff\xff\xff\xff not deflate"),
            [frame(0x1, b"a"), frame(FIN | RSV1, b"b")].concat(),
            [frame(RSV1 | 0x1, &compress(b"a")), frame(FIN | 0x1, b"new")].concat(),
        ] {
            let out = through(input, 1 << 16).await;
            assert!(
                frames(&out).iter().any(|(_, rsv1, _)| *rsv1),
                "a frame with RSV1 reaches tungstenite: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_decompression_bomb_stops_at_the_message_limit() {
        let bomb = compress(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 4096);
        let out = through(frame(FIN | RSV1 | 0x1, &bomb), 64 * 1024).await;
        let (_, len, _) = parse_header(&out).unwrap();
        assert_eq!(
            len,
            4 * 1024 + 1,
            "one byte over the message limit: the session answers too_large"
        );
        // A message exactly at the limit inflates whole.
        let exact = vec![b'b'; 4 * 1024];
        let out = through(frame(FIN | RSV1 | 0x1, &compress(&exact)), 64 * 1024).await;
        assert_eq!(frames(&out), vec![(0x1, false, exact)]);
    }

    #[tokio::test]
    async fn a_continuation_claiming_nearly_2_to_the_64_bytes_is_refused_as_too_big() {
        for collected in [1usize, 100] {
            let mut input = frame(RSV1 | 0x1, &vec![0u8; collected]);
            // FIN continuation, masked, 64-bit length 2^64 - collected, a mask key, no payload.
            input.extend_from_slice(&[FIN, MASKED | 127]);
            input.extend_from_slice(&(u64::MAX - collected as u64 + 1).to_be_bytes());
            input.extend_from_slice(&[1, 2, 3, 4]);
            let out = through(input, 64 * 1024).await;
            let (_, len, _) = parse_header(&out).unwrap();
            assert_eq!(
                len,
                64 * 1024 + 1,
                "collected {collected}: a 1009, no panic, no growth"
            );
        }
    }

    #[tokio::test]
    async fn rsv2_or_rsv3_on_a_compressed_frame_is_a_protocol_error() {
        let out = through(frame(FIN | RSV1 | 0x20 | 0x1, &compress(b"x")), 1 << 16).await;
        assert!(frames(&out).iter().any(|(_, rsv1, _)| *rsv1));
    }
}
