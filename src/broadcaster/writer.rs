//! A session's write side: everything pending goes out in vectored writes, pings go out on
//! schedule, and every wait has a deadline. It writes what the fan-out threads leave to it
//! (replies, control frames, a wss session's frames, the rest of a frame the fan-out began,
//! anything queued while the socket was full): while it has frames in hand, the fan-out
//! does not touch the socket ([`super::outbox`]).
//!
//! - **Batching**: each wake-up takes whatever is queued (up to [`BATCH_FRAMES`] frames /
//!   [`BATCH_BYTES`]) and writes it with `write_vectored`, straight from the shared frames:
//!   no per-client copy, no write buffer that keeps the size of the largest frame.
//! - **Write deadline** (`WS_WRITE_TIMEOUT_MS`): while there is something to write, a write
//!   that moves no byte for this long ends the connection (a client that does not read).
//! - **Pong deadline** (`WS_PONG_TIMEOUT_MS`): measured on its own timer, not at ping time,
//!   and whether or not the writer is blocked; past it the session closes ("no pong").
//! - **Close**: the close frame goes after the frame being written (never inside one), then
//!   the write side is shut down (FIN), so the client reads our close frame before the
//!   connection ends.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use metrics::counter;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::frame::WireFrame;
use super::outbox::{Closing, Next, Outbound, Outbox, consume_written};
use crate::telemetry as m;

/// Most frames taken into one vectored write (Linux accepts up to 1024 slices).
pub const BATCH_FRAMES: usize = 64;
/// Most bytes taken from the queue at once.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Close code when a client answered no ping in time (normal closure, reason "no pong").
pub const CLOSE_NO_PONG: u16 = super::session::CLOSE_NORMAL;

/// The writer's timing.
#[derive(Debug, Clone, Copy)]
pub struct WriterTiming {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// Our close frame is out and the write side is shut down: wait for the client's reply.
    CloseSent,
    /// The reply to the client's close frame is out (or nothing more was to be written).
    Finished,
    /// Nothing moved for the write timeout.
    WriteTimeout,
    /// The socket failed.
    Broken,
}

/// When the client last answered a ping, on the monotonic clock: a wall-clock step must
/// neither close every connection at once nor disable the timeout.
pub struct PongClock {
    /// The session's start; `last` counts from here.
    origin: Instant,
    /// Milliseconds from `origin` to the last pong (or to the start).
    last: AtomicU64,
}

impl PongClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self) {
        self.last.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// How long since the last pong.
    pub fn silence(&self) -> Duration {
        Duration::from_millis(
            self.elapsed_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    /// When the silence reaches `timeout`, if no pong comes first.
    fn deadline(&self, timeout: Duration) -> Instant {
        self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout
    }
}

impl Default for PongClock {
    fn default() -> Self {
        Self::new()
    }
}

/// What is being written: control frames and data frames, in wire order, with how much of
/// the first one is already out.
struct Batch {
    frames: VecDeque<Piece>,
    /// Bytes of `frames[0]` already written.
    offset: usize,
}

struct Piece {
    bytes: Bytes,
    /// The data frame this is (control frames have none); released from the outbox's budget
    /// when written.
    data: Option<Outbound>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Where a frame may go in ahead of queued data: after the frame being written.
    fn boundary(&self) -> usize {
        usize::from(self.offset > 0).min(self.frames.len())
    }

    /// Puts a control frame ahead of the data frames not yet started, behind the control
    /// frames already waiting (in the order they came).
    fn insert_control(&mut self, bytes: Bytes) {
        let mut at = self.boundary();
        while self.frames.get(at).is_some_and(|p| p.data.is_none()) {
            at += 1;
        }
        self.frames.insert(at, Piece { bytes, data: None });
    }

    /// Drops every data frame not yet started (the session is closing); returns their bytes.
    fn drop_unstarted_data(&mut self) -> usize {
        let keep = self.boundary();
        let mut dropped = 0;
        let mut kept = VecDeque::with_capacity(self.frames.len());
        for (i, piece) in self.frames.drain(..).enumerate() {
            match &piece.data {
                Some(_) if i >= keep => dropped += piece.bytes.len(),
                _ => kept.push_back(piece),
            }
        }
        self.frames = kept;
        dropped
    }

    /// Points `slices` at the frames to write; returns how many it filled.
    fn fill_slices<'a>(&'a self, slices: &mut [IoSlice<'a>; BATCH_FRAMES]) -> usize {
        let mut n = 0;
        for (slot, piece) in slices.iter_mut().zip(&self.frames) {
            *slot = IoSlice::new(if n == 0 {
                &piece.bytes[self.offset..]
            } else {
                &piece.bytes
            });
            n += 1;
        }
        n
    }

    /// Accounts for `n` bytes written; returns the data frames completed.
    fn advance(&mut self, n: usize, done: &mut Vec<Outbound>) {
        consume_written(
            &mut self.frames,
            &mut self.offset,
            n,
            |piece| piece.bytes.len(),
            |piece| done.extend(piece.data),
        );
    }
}

/// What woke the writer up.
enum Wake {
    /// A write (`Some(bytes)`) or a flush (`None`) completed.
    Wrote(io::Result<Option<usize>>),
    Timer,
    Changed,
}

/// Writes until the session is closed or the socket fails. Never waits on the client
/// without a deadline.
///
/// Cost per frame for a client that keeps up: one lock of the outbox and one write, no timer
/// operation. The write is tried before anything waits, and a single timer (re-armed only
/// when it fires, or when a write blocks and the write deadline is the nearest) covers the
/// ping schedule, the pong deadline and the write deadline.
pub async fn run<W: AsyncWrite + Unpin>(
    mut io: W,
    outbox: &Outbox,
    pong: &PongClock,
    timing: WriterTiming,
) -> WriterEnd {
    let mut batch = Batch {
        frames: VecDeque::new(),
        offset: 0,
    };
    let (mut control, mut data, mut done) = (Vec::new(), VecDeque::new(), Vec::new());
    let mut next_ping = Instant::now() + timing.ping_interval;
    let mut last_progress = Instant::now();
    let timer = tokio::time::sleep_until(next_ping.min(pong.deadline(timing.pong_timeout)));
    tokio::pin!(timer);
    // `Some` once the outbox said how this session ends.
    let mut ending: Option<WriterEnd> = None;
    // Bytes were written since the last flush.
    let mut unflushed = false;
    loop {
        // Take what is pending; once closing, data frames not yet started are dropped.
        let was_empty = batch.is_empty();
        if ending.is_none() {
            let room = BATCH_FRAMES.saturating_sub(batch.frames.len());
            let in_hand = !batch.is_empty() || unflushed;
            let next = outbox.take(&mut control, &mut data, room, BATCH_BYTES, in_hand);
            if !matches!(next, Next::Write { .. }) {
                outbox.release(batch.drop_unstarted_data());
            }
            // Data first: a frame the fan-out wrote in part continues where it stopped, and
            // control frames go in behind it, ahead of the frames not yet started, and ahead
            // of our close frame (nothing may follow that).
            batch.frames.extend(data.drain(..).map(|frame| Piece {
                bytes: frame.frame.bytes().clone(),
                data: Some(frame),
            }));
            if let Next::Write { offset } = next
                && offset > 0
            {
                // The fan-out writes only while the writer holds nothing.
                debug_assert!(was_empty);
                batch.offset = offset;
            }
            for bytes in control.drain(..) {
                batch.insert_control(bytes);
            }
            match next {
                Next::Write { .. } => {}
                Next::Close(close) => {
                    batch.frames.push_back(Piece {
                        bytes: close.bytes().clone(),
                        data: None,
                    });
                    ending = Some(WriterEnd::CloseSent);
                }
                Next::Done => ending = Some(WriterEnd::Finished),
                Next::Abort => return WriterEnd::Broken,
            }
        }
        if was_empty && !batch.is_empty() {
            last_progress = Instant::now();
        }
        if batch.is_empty()
            && !unflushed
            && let Some(end) = ending
        {
            // Everything is out: FIN, so the client sees the end after our last frame.
            let _ = tokio::time::timeout(timing.write_timeout, io.shutdown()).await;
            return end;
        }

        // Busy: something to write, or written bytes a TLS layer may still hold (a plain
        // socket's flush is free). A client that keeps up takes the write at once: no timer,
        // no select.
        let busy = !batch.is_empty() || unflushed;
        let mut wake = None;
        if busy {
            wake = write_or_flush(&mut io, &batch)
                .now_or_never()
                .map(Wake::Wrote);
        }
        let wake = match wake {
            Some(wake) => wake,
            None => {
                let open = ending.is_none();
                let mut due = next_ping;
                if open {
                    due = due.min(pong.deadline(timing.pong_timeout));
                }
                if busy {
                    due = due.min(last_progress + timing.write_timeout);
                }
                // A later deadline waits for the timer to fire early and be re-armed.
                if timer.deadline() > due {
                    timer.as_mut().reset(due);
                }
                tokio::select! {
                    biased;
                    result = write_or_flush(&mut io, &batch), if busy => Wake::Wrote(result),
                    _ = &mut timer => Wake::Timer,
                    _ = outbox.changed(), if open => Wake::Changed,
                }
            }
        };
        match wake {
            Wake::Wrote(Ok(Some(0))) | Wake::Wrote(Err(_)) => {
                outbox.close(Closing::Abort);
                return WriterEnd::Broken;
            }
            Wake::Wrote(Ok(None)) => {
                last_progress = Instant::now();
                unflushed = false;
            }
            Wake::Wrote(Ok(Some(n))) => {
                last_progress = Instant::now();
                unflushed = true;
                batch.advance(n, &mut done);
                if !done.is_empty() {
                    outbox.delivered(&done);
                    done.clear();
                }
            }
            Wake::Timer => {
                let now = Instant::now();
                if busy && now >= last_progress + timing.write_timeout {
                    counter!(m::WS_WRITE_TIMEOUTS).increment(1);
                    outbox.close(Closing::Abort);
                    return WriterEnd::WriteTimeout;
                }
                if ending.is_none() && pong.silence() >= timing.pong_timeout {
                    counter!(m::WS_PONG_TIMEOUTS).increment(1);
                    outbox.close(Closing::Server {
                        code: CLOSE_NO_PONG,
                        reason: "no pong",
                    });
                }
                if now >= next_ping {
                    next_ping = now + timing.ping_interval;
                    // Through the outbox, so it is in hand before anything is written; none
                    // once the session is closing.
                    if ending.is_none() && outbox.closing().is_none() {
                        outbox.push_control(WireFrame::ping().bytes().clone());
                    }
                }
                let mut due = next_ping;
                if ending.is_none() {
                    due = due.min(pong.deadline(timing.pong_timeout).max(now));
                }
                timer.as_mut().reset(due);
            }
            Wake::Changed => {}
        }
    }
}

/// One vectored write of the batch, or a flush when the batch is empty (both cancel-safe: a
/// write that has not completed wrote nothing). A plain socket's flush returns at once; a TLS
/// stream's sends the records it still holds.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: &Batch,
) -> io::Result<Option<usize>> {
    if batch.is_empty() {
        return io.flush().await.map(|()| None);
    }
    let mut slices = [IoSlice::new(&[]); BATCH_FRAMES];
    let n = batch.fill_slices(&mut slices);
    io.write_vectored(&slices[..n]).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcaster::outbox::OutboxLimits;
    use std::ops::Not;
    use tokio::io::AsyncReadExt;

    fn outbox() -> Outbox {
        Outbox::new(OutboxLimits {
            frames: 1000,
            bytes: 1 << 20,
        })
    }

    fn timing() -> WriterTiming {
        WriterTiming {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }

    /// A connected pair: the client, and the server's socket shared as a session shares it
    /// (with the outbox, whose fan-out writes it, and with the writer).
    async fn shared_pair(
        send_buffer: Option<usize>,
    ) -> (tokio::net::TcpStream, std::sync::Arc<tokio::net::TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        if let Some(size) = send_buffer {
            socket2::SockRef::from(&server)
                .set_send_buffer_size(size)
                .unwrap();
        }
        server.writable().await.unwrap();
        (client, std::sync::Arc::new(server))
    }

    fn fanout_frame(text: &str) -> Outbound {
        Outbound {
            frame: WireFrame::text(text),
            published_at: Some(crate::bus::now_ms()),
            kind: crate::broadcaster::rooms::RoomKind::All,
        }
    }

    /// `big` then `next` queued for the fan-out on a socket with a small send buffer whose
    /// client reads nothing yet: the fan-out writes part of `big` and hands the rest over.
    async fn half_written(
        big: &Outbound,
        next: &Outbound,
    ) -> (
        tokio::net::TcpStream,
        std::sync::Arc<tokio::net::TcpStream>,
        std::sync::Arc<Outbox>,
    ) {
        let (client, server) = shared_pair(Some(4096)).await;
        let o = std::sync::Arc::new(Outbox::new(OutboxLimits {
            frames: 1000,
            bytes: 16 << 20,
        }));
        o.attach_socket(Some(server.clone()));
        let mut due = Vec::new();
        assert!(o.push_fanout(big.clone(), &mut due));
        assert!(o.push_fanout(next.clone(), &mut due));
        let crate::broadcaster::outbox::Flushed::Handed(0) = o.flush(&mut Default::default())
        else {
            panic!("the big frame cannot go out whole");
        };
        (client, server, o)
    }

    #[tokio::test]
    async fn the_fanout_writes_a_caught_up_session_without_waking_its_writer() {
        let (mut client, server) = shared_pair(None).await;
        let o = std::sync::Arc::new(outbox());
        o.attach_socket(Some(server));
        let mut due = Vec::new();
        let frames: Vec<Outbound> = (0..3).map(|i| fanout_frame(&format!("f{i}"))).collect();
        for f in &frames {
            assert!(o.push_fanout(f.clone(), &mut due));
        }
        assert_eq!(due.len(), 1, "an outbox is due once until it is flushed");
        assert_eq!(
            o.flush(&mut Default::default()),
            crate::broadcaster::outbox::Flushed::Written(3)
        );
        assert_eq!(o.usage(), (0, 0));
        let expected: Vec<u8> = frames
            .iter()
            .flat_map(|f| f.frame.bytes().to_vec())
            .collect();
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), o.changed())
                .await
                .is_err(),
            "the writer was not woken"
        );
    }

    #[tokio::test]
    async fn a_frame_the_fanout_wrote_in_part_is_finished_first_then_control_then_the_rest() {
        let big = fanout_frame(&"b".repeat(4 << 20));
        let small = fanout_frame("after");
        let (mut client, server, o) = half_written(&big, &small).await;
        // A pong arrives while the big frame is half out: it must wait for the frame's end.
        let pong = Bytes::from_static(b"\x8a\x00");
        o.push_control(pong.clone());
        let clock = std::sync::Arc::new(PongClock::new());
        let writer = {
            let (o, clock) = (o.clone(), clock.clone());
            let io = crate::net::shared_tcp::SharedTcp(server);
            tokio::spawn(async move { run(io, &o, &clock, timing()).await })
        };
        let expected_len = big.frame.len() + pong.len() + small.frame.len();
        let mut got = vec![0u8; expected_len];
        client.read_exact(&mut got).await.unwrap();
        let mut expected = big.frame.bytes().to_vec();
        expected.extend_from_slice(&pong);
        expected.extend_from_slice(small.frame.bytes());
        assert!(
            got == expected,
            "the big frame whole, the pong, then the next frame"
        );
        o.close(Closing::Server {
            code: 1000,
            reason: "bye",
        });
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, WireFrame::close(1000, "bye").bytes().to_vec());
        assert_eq!(writer.await.unwrap(), WriterEnd::CloseSent);
        assert_eq!(o.usage(), (0, 0), "every byte released");
    }

    #[tokio::test]
    async fn closing_keeps_only_the_frame_the_fanout_wrote_in_part() {
        let big = fanout_frame(&"c".repeat(2 << 20));
        let (mut client, server, o) = half_written(&big, &fanout_frame("dropped")).await;
        let mut due = Vec::new();
        o.close(Closing::Server {
            code: 1013,
            reason: "send buffer full",
        });
        assert_eq!(o.usage().0, 1, "only the frame begun on the wire is kept");
        // Nothing is written from the fan-out once closing.
        assert!(o.push_fanout(fanout_frame("late"), &mut due).not());
        let clock = PongClock::new();
        let io = crate::net::shared_tcp::SharedTcp(server);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        assert_eq!(run(io, &o, &clock, timing()).await, WriterEnd::CloseSent);
        let mut expected = big.frame.bytes().to_vec();
        expected.extend_from_slice(WireFrame::close(1013, "send buffer full").bytes());
        assert!(
            reader.await.unwrap() == expected,
            "the whole frame, then the close frame"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pong_silence_follows_the_monotonic_clock() {
        let clock = PongClock::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.silence(), Duration::from_secs(30));
        clock.record();
        assert_eq!(clock.silence(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(clock.silence(), Duration::from_secs(61));
    }

    #[tokio::test]
    async fn frames_are_written_whole_and_in_order_then_the_close_frame() {
        let (client, server) = tokio::io::duplex(64);
        let o = outbox();
        for i in 0..50 {
            assert!(o.push(Outbound::reply(WireFrame::text(&format!("frame {i}")))));
        }
        o.close(Closing::Server {
            code: 1000,
            reason: "bye",
        });
        // Closing drops queued frames that were not started: only the close frame remains.
        let pong = PongClock::new();
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        assert_eq!(run(server, &o, &pong, timing()).await, WriterEnd::CloseSent);
        let bytes = reader.await.unwrap();
        assert_eq!(bytes, WireFrame::close(1000, "bye").bytes().to_vec());
    }

    #[tokio::test]
    async fn a_close_waits_for_the_frame_being_written() {
        let (mut client, server) = tokio::io::duplex(16);
        let o = std::sync::Arc::new(outbox());
        let big = WireFrame::text(&"y".repeat(1000));
        assert!(o.push(Outbound::reply(big.clone())));
        assert!(o.push(Outbound::reply(WireFrame::text("never sent"))));
        let pong = std::sync::Arc::new(PongClock::new());
        let writer = {
            let (o, pong) = (o.clone(), pong.clone());
            tokio::spawn(async move { run(server, &o, &pong, timing()).await })
        };
        // Read a little of the big frame, then close while it is half written.
        let mut head = [0u8; 16];
        client.read_exact(&mut head).await.unwrap();
        o.close(Closing::Server {
            code: 1013,
            reason: "send buffer full",
        });
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(writer.await.unwrap(), WriterEnd::CloseSent);
        let mut expected = big.bytes().to_vec();
        expected.extend_from_slice(WireFrame::close(1013, "send buffer full").bytes());
        let mut got = head.to_vec();
        got.extend(rest);
        assert_eq!(
            got, expected,
            "the big frame completes, then the close frame"
        );
        assert_eq!(o.usage(), (0, 0), "every byte released");
    }

    #[tokio::test]
    async fn control_frames_keep_their_order_and_the_close_reply_ends_it() {
        let (mut client, server) = tokio::io::duplex(1024);
        let o = outbox();
        assert!(o.push(Outbound::reply(WireFrame::text(
            "dropped: the client closed"
        ))));
        let pong = Bytes::from_static(b"\x8a\x01p");
        let close = Bytes::from_static(b"\x88\x02\x03\xe8");
        o.push_control(pong.clone());
        o.push_control(close.clone());
        o.push_control(Bytes::from_static(b"\x8a\x01q"));
        let clock = PongClock::new();
        assert_eq!(run(server, &o, &clock, timing()).await, WriterEnd::Finished);
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes, [pong.to_vec(), close.to_vec()].concat());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_meets_the_write_deadline() {
        let (_client, server) = tokio::io::duplex(16);
        let o = outbox();
        assert!(o.push(Outbound::reply(WireFrame::text(&"z".repeat(100)))));
        let pong = PongClock::new();
        let started = Instant::now();
        assert_eq!(
            run(server, &o, &pong, timing()).await,
            WriterEnd::WriteTimeout
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(o.closing(), Some(Closing::Abort));
    }

    #[tokio::test]
    async fn a_pong_taken_with_our_close_goes_before_it() {
        // A client's ping and then a protocol violation in one read: the pong and the 1002
        // close reach the writer in one take.
        let (mut client, server) = tokio::io::duplex(1024);
        let o = outbox();
        let pong_reply = Bytes::from_static(b"\x8a\x00");
        o.push_control(pong_reply.clone());
        o.close(Closing::Server {
            code: 1002,
            reason: "protocol error",
        });
        let clock = PongClock::new();
        assert_eq!(
            run(server, &o, &clock, timing()).await,
            WriterEnd::CloseSent
        );
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        let mut expected = pong_reply.to_vec();
        expected.extend_from_slice(WireFrame::close(1002, "protocol error").bytes());
        assert_eq!(
            bytes, expected,
            "the pong, then the close frame, then nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_follows_the_close_frame_when_the_ping_and_pong_deadlines_meet() {
        let (mut client, server) = tokio::io::duplex(1024);
        let o = outbox();
        let pong = PongClock::new();
        let timing = WriterTiming {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
        };
        // A pong of ours for a client ping is waiting when the deadlines meet at 2 s.
        let clock = &pong;
        let writer = run(server, &o, clock, timing);
        let pong_reply = Bytes::from_static(b"\x8a\x00");
        let queue_reply = async {
            tokio::time::sleep(Duration::from_millis(1999)).await;
            o.push_control(pong_reply.clone());
        };
        let (end, ()) = tokio::join!(writer, queue_reply);
        assert_eq!(end, WriterEnd::CloseSent);
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        let close = WireFrame::close(1000, "no pong");
        assert!(
            bytes.ends_with(close.bytes()),
            "the close frame is the last frame: {bytes:?}"
        );
        let ping = WireFrame::ping();
        let mut expected = ping.bytes().to_vec();
        expected.extend_from_slice(&pong_reply);
        expected.extend_from_slice(close.bytes());
        assert_eq!(
            bytes, expected,
            "the ping at 1 s, the pong, then the close at 2 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pings_go_out_and_a_missing_pong_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let o = outbox();
        let pong = PongClock::new();
        let timing = WriterTiming {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_millis(2500),
            write_timeout: Duration::from_secs(10),
        };
        let end = run(server, &o, &pong, timing).await;
        assert_eq!(end, WriterEnd::CloseSent);
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        let ping = WireFrame::ping();
        let mut expected = Vec::new();
        for _ in 0..2 {
            expected.extend_from_slice(ping.bytes());
        }
        expected.extend_from_slice(WireFrame::close(1000, "no pong").bytes());
        assert_eq!(bytes, expected, "two pings, then the close at 2.5 s");
    }
}
