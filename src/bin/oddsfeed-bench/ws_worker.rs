//! One worker process of `oddsfeed-bench ws`: opens its share of the clients and measures them.
//!
//! The clients are lean on purpose, so that the load generator does not take the cores the
//! server is measured on: each reads frames with tungstenite's header parser but keeps only
//! the first bytes of each payload (where `seq` and `publishedAtUs` are), without UTF-8
//! validation, JSON parsing or a copy of the rest. Talks to the parent over stdio: prints one
//! `ready` JSON line once every client has its snapshot, starts recording on `start`, and on
//! `stop` prints one `result` JSON line and exits.

use std::io::Cursor;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_util::sync::CancellationToken;

use crate::histogram::Histogram;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Server addresses (host:port); client i connects to the (i mod n)th.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<SocketAddr>,
    /// Request path of the WebSocket endpoint.
    #[arg(long, default_value = "/ws")]
    pub path: String,
    /// Clients this worker opens.
    #[arg(long)]
    pub clients: usize,
    /// Index of this worker's first client (rooms and source addresses go round-robin over
    /// the global index).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Rooms each client joins: client i joins rooms i, i+1, … (mod the list).
    #[arg(long, default_value_t = 1)]
    pub rooms_per_client: usize,
    /// Offer permessage-deflate (bytes are then counted compressed, as on the wire).
    #[arg(long)]
    pub deflate: bool,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 64)]
    pub source_addresses: u8,
}

/// What every client of this worker shares.
struct Shared {
    /// The request path, and whether to offer permessage-deflate (the same for every client).
    path: String,
    deflate: bool,
    recording: AtomicBool,
    latency: Histogram,
    frames: AtomicU64,
    bytes: AtomicU64,
    gaps: AtomicU64,
    lost: AtomicU64,
}

/// Bytes of a payload kept: enough for the head of an `odds` frame and any ping payload.
const HEAD: usize = 256;

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.rooms.is_empty()
            && args.source_addresses > 0
            && !args.addr.is_empty()
            && (1..=args.rooms.len()).contains(&args.rooms_per_client),
        "need server addresses, source addresses, and 1 to {} rooms per client",
        args.rooms.len()
    );
    let shared = Arc::new(Shared {
        path: args.path.clone(),
        deflate: args.deflate,
        recording: AtomicBool::new(false),
        latency: Histogram::new(),
        frames: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.clients.max(1));
    let mut tasks = Vec::with_capacity(args.clients);
    for i in args.first..args.first + args.clients {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % usize::from(args.source_addresses)) as u8,
        );
        let rooms: Vec<String> = (0..args.rooms_per_client)
            .map(|k| args.rooms[(i + k) % args.rooms.len()].clone())
            .collect();
        tasks.push(tokio::spawn(client(
            args.addr[i % args.addr.len()],
            source,
            rooms,
            ready_tx.clone(),
            shared.clone(),
            stop.clone(),
        )));
        // Pace the connects so the accept queue never overflows.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(ready_tx);
    let mut connect_ms = Vec::new();
    let mut errors = Vec::new();
    // Each client reports once (and keeps its sender while it runs).
    for _ in 0..args.clients {
        let Some(result) = ready_rx.recv().await else {
            break;
        };
        match result {
            Ok(d) => connect_ms.push(d.as_secs_f64() * 1e3),
            Err(e) => errors.push(e),
        }
    }
    println!(
        "{}",
        json!({"ready": true, "connected": connect_ms.len(), "failed": errors.len(),
               "firstError": errors.first(), "connectMs": connect_ms})
    );
    let cpu_ms = || crate::cpu_time(std::process::id()).map_or(0, |d| d.as_millis());
    let mut cpu_at_start = cpu_ms();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = stdin.next_line().await {
        match line.trim() {
            "start" => {
                cpu_at_start = cpu_ms();
                shared.recording.store(true, Ordering::SeqCst);
            }
            "stop" => break,
            _ => {}
        }
    }
    shared.recording.store(false, Ordering::SeqCst);
    // This worker's CPU time in the window.
    let cpu_ms = cpu_ms().saturating_sub(cpu_at_start);
    println!(
        "{}",
        json!({"result": true,
               "frames": shared.frames.load(Ordering::SeqCst),
               "bytes": shared.bytes.load(Ordering::SeqCst),
               "gaps": shared.gaps.load(Ordering::SeqCst),
               "lost": shared.lost.load(Ordering::SeqCst),
               "cpuMs": cpu_ms,
               "latency": shared.latency.nonzero()})
    );
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Unix time in microseconds.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A masked client frame (FIN set).
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let key = rand::random::<[u8; 4]>();
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The number after `"key":` in a frame head.
fn field(head: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(&head[..head.len().min(HEAD)])
        .ok()
        .or_else(|| {
            // A head cut inside a multi-byte character: the keys are before it.
            let valid = std::str::from_utf8(head).err()?.valid_up_to();
            std::str::from_utf8(&head[..valid]).ok()
        })?;
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The room a frame head names (`"room":"…"`).
fn room_of(head: &[u8]) -> Option<&[u8]> {
    let key = br#""room":""#;
    let start = head.windows(key.len()).position(|w| w == key)? + key.len();
    let len = head[start..].iter().position(|b| *b == b'"')?;
    Some(&head[start..start + len])
}

/// One client: connect from `source`, upgrade, subscribe to `rooms`, wait for their
/// snapshots, then count what arrives until `stop`, checking each room's seqs.
async fn client(
    addr: SocketAddr,
    source: Ipv4Addr,
    rooms: Vec<String>,
    ready: tokio::sync::mpsc::Sender<Result<Duration, String>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(60),
        connect(addr, &shared.path, shared.deflate, source, &rooms),
    )
    .await
    .unwrap_or_else(|_| Err("timed out connecting".into()));
    let (mut tcp, mut reader) = match connected {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    // Each room's last seq, in the order of `rooms`.
    let mut last_seq: Vec<Option<u64>> = vec![None; rooms.len()];
    let mut snapshots = 0;
    let mut reported = false;
    let mut inflater = flate2::Decompress::new(false);
    let index = |head: &[u8]| {
        let room = room_of(head)?;
        rooms.iter().position(|r| r.as_bytes() == room)
    };
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            frame = reader.next(&mut tcp) => frame,
        };
        let Some(Frame {
            opcode,
            len,
            head,
            compressed,
        }) = frame
        else {
            if reported {
                shared.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = ready.send(Err("closed before the snapshot".into())).await;
            }
            return;
        };
        let head = if compressed {
            inflate_head(&mut inflater, &head)
        } else {
            head
        };
        match opcode {
            0x1 if head.starts_with(br#"{"type":"odds""#) => {
                let seq = field(&head, r#""seq":"#);
                let Some(room) = index(&head) else { continue };
                if shared.recording.load(Ordering::Relaxed) {
                    let published = field(&head, r#""publishedAtUs":"#)
                        .or_else(|| field(&head, r#""publishedAt":"#).map(|ms| ms * 1000));
                    if let Some(published) = published {
                        shared.latency.record(now_us().saturating_sub(published));
                    }
                    shared.frames.fetch_add(1, Ordering::Relaxed);
                    shared.bytes.fetch_add(len, Ordering::Relaxed);
                    if last_seq[room].is_some_and(|last| Some(last + 1) != seq) {
                        shared.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
                last_seq[room] = seq;
            }
            0x1 if head.starts_with(br#"{"type":"snapshot""#) => {
                let Some(room) = index(&head) else { continue };
                if last_seq[room].is_none() {
                    snapshots += 1;
                }
                last_seq[room] = field(&head, r#""seq":"#);
                if !reported && snapshots == rooms.len() {
                    reported = true;
                    let _ = ready.send(Ok(started.elapsed())).await;
                }
            }
            // A ping is answered; a close, or a pong that cannot be sent, ends the client.
            0x9 if tcp.write_all(&client_frame(0xA, &head)).await.is_ok() => {}
            0x8 | 0x9 => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => {}
        }
    }
}

/// Connects, upgrades and subscribes; returns the socket and a reader holding whatever
/// arrived right behind the handshake.
pub(crate) async fn connect(
    addr: SocketAddr,
    path: &str,
    deflate: bool,
    source: Ipv4Addr,
    rooms: &[String],
) -> Result<(TcpStream, FrameReader), String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let extension = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extension}\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new();
    let head_end = loop {
        if let Some(end) = reader.pending().windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if !reader.fill(&mut tcp).await {
            return Err("closed during the handshake".into());
        }
    };
    if !reader.pending().starts_with(b"HTTP/1.1 101") {
        let answer = String::from_utf8_lossy(&reader.pending()[..head_end]).into_owned();
        return Err(format!(
            "not upgraded: {}",
            answer.lines().next().unwrap_or("")
        ));
    }
    reader.consume(head_end);
    for room in rooms {
        let subscribe = json!({"type": "subscribe", "room": room}).to_string();
        tcp.write_all(&client_frame(0x1, subscribe.as_bytes()))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((tcp, reader))
}

/// A frame as the client keeps it: opcode, payload length, and the payload's first bytes.
pub(crate) struct Frame {
    pub(crate) opcode: u8,
    pub(crate) len: u64,
    /// The payload's first bytes ([`HEAD`], or as many as [`FrameReader::keep_whole`] asks).
    pub(crate) head: Vec<u8>,
    /// RSV1: the payload is compressed (permessage-deflate).
    pub(crate) compressed: bool,
}

/// The first bytes of a compressed message, from the first bytes of its payload (a prefix
/// of a DEFLATE stream inflates to a prefix of the message); `inflater` is reset and reused
/// (every message is compressed on its own).
fn inflate_head(inflater: &mut flate2::Decompress, z: &[u8]) -> Vec<u8> {
    inflater.reset(false);
    let mut out = Vec::with_capacity(HEAD);
    let _ = inflater.decompress_vec(z, &mut out, flate2::FlushDecompress::None);
    out
}

/// Reads frames from a socket into a fixed 8 KiB buffer, keeping only each payload's head.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload bytes kept per frame.
    keep: usize,
}

impl FrameReader {
    fn new() -> Self {
        Self {
            buf: vec![0; 8 * 1024],
            start: 0,
            end: 0,
            keep: HEAD,
        }
    }

    /// Keeps whole payloads from now on (for a client that parses what it receives).
    pub(crate) fn keep_whole(&mut self) {
        self.keep = usize::MAX;
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self, tcp: &mut TcpStream) -> bool {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        matches!(tcp.read(&mut self.buf[self.end..]).await, Ok(n) if n > 0 && {
            self.end += n;
            true
        })
    }

    /// The next frame; `None` at the end of the stream or on a malformed frame.
    pub(crate) async fn next(&mut self, tcp: &mut TcpStream) -> Option<Frame> {
        let (opcode, len, compressed) = loop {
            let mut cursor = Cursor::new(self.pending());
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let used = cursor.position() as usize;
                    self.consume(used);
                    break (u8::from(header.opcode), len, header.rsv1);
                }
                Ok(None) => {
                    if !self.fill(tcp).await {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        };
        let mut head = Vec::with_capacity(self.keep.min(len as usize).min(64 << 20));
        let mut left = len;
        while left > 0 {
            if self.start == self.end && !self.fill(tcp).await {
                return None;
            }
            let take = (self.end - self.start).min(usize::try_from(left).unwrap_or(usize::MAX));
            let keep = take.min(self.keep - head.len().min(self.keep));
            head.extend_from_slice(&self.buf[self.start..self.start + keep]);
            self.consume(take);
            left -= take as u64;
        }
        Some(Frame {
            opcode,
            len,
            head,
            compressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_head() {
        let head = br#"{"type":"odds","room":"sport:all","epoch":"e","seq":42,"publishedAt":1700000000123,"publishedAtUs":1700000000123456,"upserts":[{"#;
        assert_eq!(field(head, r#""seq":"#), Some(42));
        assert_eq!(
            field(head, r#""publishedAtUs":"#),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(field(head, r#""publishedAt":"#), Some(1_700_000_000_123));
        assert_eq!(field(b"{\"seq\":\xe2\x82", r#""seq":"#), None);
    }

    #[test]
    fn the_head_of_a_compressed_message_inflates_from_its_first_bytes() {
        let message = format!(
            r#"{{"type":"odds","room":"sport:all","seq":7,"upserts":[{}]}}"#,
            "{\"id\":\"e\"},".repeat(2000)
        );
        let z = oddsfeed::broadcaster::deflate::compress(message.as_bytes());
        let mut inflater = flate2::Decompress::new(false);
        let head = inflate_head(&mut inflater, &z[..HEAD.min(z.len())]);
        assert_eq!(
            inflate_head(&mut inflater, &z[..HEAD.min(z.len())]),
            head,
            "reusable"
        );
        assert!(head.starts_with(br#"{"type":"odds""#));
        assert_eq!(field(&head, r#""seq":"#), Some(7));
    }

    #[test]
    fn client_frames_are_masked() {
        let frame = client_frame(0x1, b"hi");
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 0x82);
        let key = &frame[2..6];
        assert_eq!([frame[6] ^ key[0], frame[7] ^ key[1]], *b"hi");
    }
}
