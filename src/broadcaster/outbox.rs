//! One session's send queue, bounded in frames and in bytes, and the way to close it.
//!
//! Producers (the hub's fan-out, the session's replies) never wait: [`Outbox::push`] either
//! queues a frame or, when the frame would take the session past its budget, closes the
//! session as a slow client (1013) and drops everything queued. The budget counts the bytes
//! queued and the bytes the writer has taken but not yet written, so a client that does not
//! read holds at most `bytes` of frames (shared with other sessions where they are room
//! frames) for at most the write timeout.
//!
//! Control frames (pongs and close replies from the protocol layer, the writer's pings) go in
//! a small lane of their own that the writer sends before any data frame not yet started.
//!
//! Two parties write a session's socket, never at once: its writer task, and for room frames
//! the fan-out threads ([`super::fanout`]). Both act under this queue's lock. The fan-out
//! writes only while the writer has nothing in hand (`writer_busy`), nothing is waiting in the
//! control lane and the session is open; it writes from the front of the queue, so the order
//! on the wire is the queue's order. What it cannot write at once (a full socket, or the rest
//! of a frame it wrote in part) stays at the front of the queue, with how much of the first
//! frame is already out, and the writer is woken to finish it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use metrics::{Histogram, counter, histogram};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::frame::WireFrame;
use super::rooms::RoomKind;
use crate::bus::now_ms;
use crate::telemetry as m;

/// Most frames in one vectored write from the fan-out (a caught-up session has one or two).
const FLUSH_SLICES: usize = 16;

/// Close code for a client that cannot keep up (RFC 6455 "try again later").
pub const CLOSE_SLOW_CLIENT: u16 = 1013;

/// Most control frames waiting at once; in a ping flood the oldest pong makes room: answering
/// the latest ping is enough (RFC 6455 §5.5.3).
const CONTROL_FRAMES: usize = 8;

/// Below this many bytes queued, any frame is accepted, so one frame larger than the whole
/// budget (a big snapshot, right behind its `subscribed` reply) does not lock a client out.
pub const IDLE_BYTES: usize = 64 * 1024;

/// One frame on its way to a socket.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The encoded frame, shared between all members of a room.
    pub frame: WireFrame,
    /// `publishedAt` of the odds message it carries, for the end-to-end latency histogram.
    pub published_at: Option<i64>,
    pub kind: RoomKind,
}

impl Outbound {
    /// A frame for this client only.
    pub fn reply(frame: WireFrame) -> Self {
        Self {
            frame,
            published_at: None,
            kind: RoomKind::Reply,
        }
    }
}

/// Limits of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Frames queued at most.
    pub frames: usize,
    /// Bytes queued or being written at most (`SEND_BUFFER_BYTES`).
    pub bytes: usize,
}

/// Why and how a session ends, as far as its writer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The server closes: send a close frame with this code and reason, then stop.
    Server { code: u16, reason: &'static str },
    /// The client sent a close frame: send the protocol layer's reply (already in the
    /// control lane), then stop.
    Peer,
    /// Stop at once: the connection is broken or must be dropped.
    Abort,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Frames to write (possibly none yet: wait for [`Outbox::changed`]); `offset` bytes of
    /// the first data frame taken were already written by the fan-out.
    Write { offset: usize },
    /// Write this close frame, then stop.
    Close(WireFrame),
    /// Write the control frames taken (the reply to the client's close), then stop.
    Done,
    /// Stop now, writing nothing more.
    Abort,
}

struct Queue {
    control: VecDeque<Bytes>,
    data: VecDeque<Outbound>,
    /// Bytes in `data` plus bytes taken by the writer and not yet released.
    bytes: usize,
    closing: Option<Closing>,
    /// The close frame (ours) was handed to the writer: nothing may follow it.
    close_taken: bool,
    /// The reply to the client's close frame is queued: nothing may follow it either.
    peer_close_queued: bool,
    /// Bytes of `data[0]` the fan-out already wrote; the writer sends the rest.
    head_written: usize,
    /// The writer has frames in hand (taken and not all written): only it may write now.
    writer_busy: bool,
    /// Handed to the fan-out and not yet flushed.
    flush_due: bool,
    /// The socket, for the fan-out's writes (plain TCP only; `None` after the session ends).
    socket: Option<Arc<TcpStream>>,
}

/// Accounts for `n` bytes written from the front of `queue`, whose first item had `offset`
/// bytes out already: each item now written whole goes to `done`, in order, and `offset`
/// becomes how much of the new first item is out. The fan-out's and the writer's one rule.
pub(super) fn consume_written<T>(
    queue: &mut VecDeque<T>,
    offset: &mut usize,
    mut n: usize,
    len: impl Fn(&T) -> usize,
    mut done: impl FnMut(T),
) {
    while n > 0 {
        let Some(front) = queue.front() else {
            break;
        };
        let left = len(front) - *offset;
        if n < left {
            *offset += n;
            return;
        }
        n -= left;
        *offset = 0;
        if let Some(item) = queue.pop_front() {
            done(item);
        }
    }
}

/// What a fan-out flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// This many frames were written in full; nothing is left.
    Written(usize),
    /// This many were written in full and the rest was handed to the session's writer.
    Handed(usize),
}

/// The publish → socket histogram per room kind, looked up once per process instead of once
/// per frame.
struct DeliveryLatency {
    all: Histogram,
    sport: Histogram,
    event: Histogram,
}

fn delivery_latency() -> &'static DeliveryLatency {
    static HANDLES: OnceLock<DeliveryLatency> = OnceLock::new();
    HANDLES.get_or_init(|| DeliveryLatency {
        all: histogram!(m::DELIVERY_LATENCY, "room" => RoomKind::All.label()),
        sport: histogram!(m::DELIVERY_LATENCY, "room" => RoomKind::Sport.label()),
        event: histogram!(m::DELIVERY_LATENCY, "room" => RoomKind::Event.label()),
    })
}

/// Publish → socket latencies of delivered frames, counted per room kind and millisecond and
/// recorded with one histogram call per value: a fan-out batch of thousands of sessions
/// records a few dozen values, not one per frame.
#[derive(Debug, Default)]
pub struct LatencyTally(Vec<(RoomKind, i64, usize)>);

impl LatencyTally {
    fn add(&mut self, frame: &Outbound, now: i64) {
        let Some(published_at) = frame.published_at else {
            return;
        };
        if !matches!(
            frame.kind,
            RoomKind::All | RoomKind::Sport | RoomKind::Event
        ) {
            return;
        }
        let ms = (now - published_at).max(0);
        // The latest entry is almost always the one: frames of one tick, one clock.
        match self
            .0
            .iter_mut()
            .rev()
            .find(|(kind, at, _)| *kind == frame.kind && *at == ms)
        {
            Some(entry) => entry.2 += 1,
            None => self.0.push((frame.kind, ms, 1)),
        }
    }

    /// Records what was counted, and starts again.
    pub fn record(&mut self) {
        let handles = delivery_latency();
        for (kind, ms, count) in self.0.drain(..) {
            let seconds = ms as f64 / 1e3;
            match kind {
                RoomKind::All => handles.all.record_many(seconds, count),
                RoomKind::Sport => handles.sport.record_many(seconds, count),
                RoomKind::Event => handles.event.record_many(seconds, count),
                RoomKind::Bridged | RoomKind::Reply => {}
            }
        }
    }
}

/// A session's bounded queue.
pub struct Outbox {
    limits: OutboxLimits,
    queue: Mutex<Queue>,
    changed: Notify,
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            limits,
            queue: Mutex::new(Queue {
                control: VecDeque::new(),
                data: VecDeque::new(),
                bytes: 0,
                closing: None,
                close_taken: false,
                peer_close_queued: false,
                head_written: 0,
                writer_busy: false,
                flush_due: false,
                socket: None,
            }),
            changed: Notify::new(),
        }
    }

    /// Lets the fan-out write room frames straight into `socket` (plain TCP), or stops it
    /// (`None`, when the session ends: the socket is then closed by its last owner).
    pub fn attach_socket(&self, socket: Option<Arc<TcpStream>>) {
        self.lock().socket = socket;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // No critical section can panic halfway through.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame and wakes the writer. False when the session is closing, or when the
    /// frame would take it past its budget: then the session is closed as a slow client.
    pub fn push(&self, frame: Outbound) -> bool {
        let mut q = self.lock();
        let Some(was_idle) = self.enqueue(&mut q, frame) else {
            return false;
        };
        drop(q);
        if was_idle {
            self.changed.notify_one();
        }
        true
    }

    /// Queues a room frame for the fan-out: when the session can be written by it, the
    /// outbox goes into `due` (once until it is flushed) and the writer is not woken;
    /// otherwise as [`Outbox::push`].
    pub fn push_fanout(self: &Arc<Self>, frame: Outbound, due: &mut Vec<Arc<Outbox>>) -> bool {
        let mut q = self.lock();
        let Some(was_idle) = self.enqueue(&mut q, frame) else {
            return false;
        };
        if q.socket.is_some() {
            if !q.flush_due {
                q.flush_due = true;
                due.push(self.clone());
            }
            return true;
        }
        drop(q);
        if was_idle {
            self.changed.notify_one();
        }
        true
    }

    /// Queues a frame within the budget; `Some(queue was empty)`, or `None` when refused.
    fn enqueue(&self, q: &mut Queue, frame: Outbound) -> Option<bool> {
        if q.closing.is_some() {
            return None;
        }
        let size = frame.frame.len();
        let over_bytes = q.bytes > IDLE_BYTES && q.bytes + size > self.limits.bytes;
        if q.data.len() >= self.limits.frames || over_bytes {
            let reason = if over_bytes {
                "send buffer full"
            } else {
                "send queue full"
            };
            counter!(m::WS_SLOW_CLIENTS_CLOSED, "limit" => if over_bytes { "bytes" } else { "frames" })
                .increment(1);
            Self::start_closing(
                q,
                Closing::Server {
                    code: CLOSE_SLOW_CLIENT,
                    reason,
                },
            );
            self.changed.notify_one();
            return None;
        }
        let was_idle = q.data.is_empty();
        q.bytes += size;
        q.data.push_back(frame);
        Some(was_idle)
    }

    /// The fan-out's part: writes what is queued straight into the socket when the writer
    /// has nothing in hand; whatever is left (a full socket, a frame written in part, a
    /// session without a shared socket or with control frames waiting) is handed to the
    /// writer. Never waits. The latencies of the frames written go into `tally`.
    pub fn flush(&self, tally: &mut LatencyTally) -> Flushed {
        let mut guard = self.lock();
        let q = &mut *guard;
        q.flush_due = false;
        let mut written = 0;
        let mut abort = false;
        if let Some(socket) = &q.socket
            && !q.writer_busy
            && q.control.is_empty()
            && q.closing.is_none()
        {
            let now = now_ms();
            while !q.data.is_empty() {
                let mut slices = [IoSlice::new(&[]); FLUSH_SLICES];
                let mut n = 0;
                for (slot, frame) in slices.iter_mut().zip(&q.data) {
                    let bytes = frame.frame.bytes();
                    *slot = IoSlice::new(if n == 0 {
                        &bytes[q.head_written..]
                    } else {
                        bytes
                    });
                    n += 1;
                }
                match socket.try_write_vectored(&slices[..n]) {
                    Ok(0) => {
                        abort = true;
                        break;
                    }
                    Ok(n) => {
                        let bytes = &mut q.bytes;
                        consume_written(
                            &mut q.data,
                            &mut q.head_written,
                            n,
                            |f| f.frame.len(),
                            |frame| {
                                *bytes -= frame.frame.len();
                                tally.add(&frame, now);
                                written += 1;
                            },
                        );
                        if q.head_written > 0 {
                            break;
                        }
                    }
                    // The socket is full: the writer waits for it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The connection is broken: end the session.
                    Err(_) => {
                        abort = true;
                        break;
                    }
                }
            }
        }
        if abort {
            Self::start_closing(q, Closing::Abort);
        }
        let left = !q.data.is_empty() || !q.control.is_empty() || q.closing.is_some();
        drop(guard);
        if left {
            self.changed.notify_one();
            Flushed::Handed(written)
        } else {
            Flushed::Written(written)
        }
    }

    /// Queues a control frame produced by the protocol layer (a pong, the reply to a close).
    /// Nothing is queued after our own close frame or after the reply to the client's. The
    /// reply to a close makes it the session's last frame: no close frame of ours follows it,
    /// whatever closing had begun.
    pub fn push_control(&self, frame: Bytes) {
        let mut q = self.lock();
        if q.close_taken || q.peer_close_queued || q.closing == Some(Closing::Abort) {
            return;
        }
        // 0x88: FIN and the close opcode (server frames carry no mask bit).
        if frame.first() == Some(&0x88) {
            q.peer_close_queued = true;
            q.closing = Some(Closing::Peer);
            Self::drop_data(&mut q);
        } else if q.control.len() >= CONTROL_FRAMES {
            q.control.pop_front();
        }
        q.control.push_back(frame);
        drop(q);
        self.changed.notify_one();
    }

    /// Starts closing; the first reason wins. Queued data frames are dropped at once.
    pub fn close(&self, closing: Closing) {
        Self::start_closing(&mut self.lock(), closing);
        self.changed.notify_one();
    }

    /// The first reason wins, except that an abort overrides any other.
    fn start_closing(q: &mut Queue, closing: Closing) {
        if q.closing.is_some() && closing != Closing::Abort {
            return;
        }
        q.closing = Some(closing);
        Self::drop_data(q);
        if closing == Closing::Abort {
            q.control.clear();
        }
    }

    /// Drops the queued data frames and their bytes (a closing session sends none of them),
    /// except a frame the fan-out wrote in part, which the writer must complete first (unless
    /// the session is aborted).
    fn drop_data(q: &mut Queue) {
        let keep = usize::from(q.head_written > 0 && q.closing != Some(Closing::Abort));
        let dropped: usize = q.data.drain(keep..).map(|f| f.frame.len()).sum();
        q.bytes -= dropped;
        if keep == 0 {
            q.head_written = 0;
        }
    }

    /// How the session is closing, if it is.
    pub fn closing(&self) -> Option<Closing> {
        self.lock().closing
    }

    /// Moves control frames into `control` and up to `max_frames` data frames (stopping
    /// after `max_bytes`) into `data`, and says what comes next. `in_hand`: the writer still
    /// has frames to write (or bytes to flush); while it has, the fan-out leaves the socket
    /// to it.
    pub fn take(
        &self,
        control: &mut Vec<Bytes>,
        data: &mut VecDeque<Outbound>,
        max_frames: usize,
        max_bytes: usize,
        in_hand: bool,
    ) -> Next {
        let mut q = self.lock();
        control.extend(q.control.drain(..));
        // A frame the fan-out wrote in part is finished before anything else, even when
        // closing (it is the only data frame a closing session keeps).
        let next = if q.closing.is_none() || q.head_written > 0 {
            let mut offset = 0;
            let mut taken = 0;
            let mut taken_frames = 0;
            while taken_frames < max_frames && taken < max_bytes {
                let Some(frame) = q.data.pop_front() else {
                    break;
                };
                if taken_frames == 0 {
                    offset = std::mem::take(&mut q.head_written);
                }
                taken += frame.frame.len();
                taken_frames += 1;
                data.push_back(frame);
                if q.closing.is_some() {
                    break;
                }
            }
            Next::Write { offset }
        } else {
            match q.closing {
                Some(Closing::Server { code, reason }) if !q.close_taken => {
                    q.close_taken = true;
                    Next::Close(WireFrame::close(code, reason))
                }
                Some(Closing::Abort) => Next::Abort,
                _ => Next::Done,
            }
        };
        q.writer_busy = in_hand
            || !control.is_empty()
            || !data.is_empty()
            || !matches!(next, Next::Write { .. });
        next
    }

    /// The writer has written (or dropped) `bytes` of the data frames it took.
    pub fn release(&self, bytes: usize) {
        let mut q = self.lock();
        q.bytes = q.bytes.saturating_sub(bytes);
    }

    /// The writer has written these data frames: their bytes are free and their latency is
    /// recorded.
    pub fn delivered(&self, frames: &[Outbound]) {
        self.release(frames.iter().map(|f| f.frame.len()).sum());
        let now = now_ms();
        let mut tally = LatencyTally::default();
        for frame in frames {
            tally.add(frame, now);
        }
        tally.record();
    }

    /// Resolves after something was queued or the session started closing since the last
    /// call (a wake-up is never lost: one that comes while nobody waits is kept).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Frames and bytes queued or being written, for tests and diagnostics.
    pub fn usage(&self) -> (usize, usize) {
        let q = self.lock();
        (q.data.len(), q.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Outbound {
        Outbound::reply(WireFrame::text(&"x".repeat(len)))
    }

    fn take_all(o: &Outbox) -> (Vec<Bytes>, VecDeque<Outbound>, Next) {
        let (mut c, mut d) = (Vec::new(), VecDeque::new());
        let next = o.take(&mut c, &mut d, usize::MAX, usize::MAX, false);
        (c, d, next)
    }

    #[test]
    fn over_the_byte_budget_closes_with_1013_and_frees_the_queue() {
        const K: usize = IDLE_BYTES;
        let o = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 3 * K,
        });
        assert!(o.push(frame(K + 1)));
        assert!(o.push(frame(K)));
        assert!(!o.push(frame(K)), "over the budget");
        assert_eq!(
            o.closing(),
            Some(Closing::Server {
                code: 1013,
                reason: "send buffer full"
            })
        );
        assert_eq!(o.usage(), (0, 0), "queued frames are dropped at once");
        assert!(!o.push(frame(1)), "nothing is queued after closing");
        let (_, data, next) = take_all(&o);
        assert!(data.is_empty());
        let Next::Close(close) = next else {
            panic!("expected the close frame, got {next:?}")
        };
        assert_eq!(&close.payload()[..2], &1013u16.to_be_bytes());
        assert!(matches!(take_all(&o).2, Next::Done), "one close frame only");
    }

    #[test]
    fn frames_taken_but_not_written_count_against_the_budget() {
        const K: usize = IDLE_BYTES;
        let limits = OutboxLimits {
            frames: 100,
            bytes: 3 * K,
        };
        let o = Outbox::new(limits);
        assert!(o.push(frame(2 * K)));
        let (_, data, _) = take_all(&o);
        assert_eq!(data.len(), 1);
        assert!(
            !o.push(frame(2 * K)),
            "the frame being written still counts"
        );
        let o = Outbox::new(limits);
        assert!(o.push(frame(2 * K)));
        let (_, data, _) = take_all(&o);
        o.release(data[0].frame.len());
        assert!(o.push(frame(2 * K)), "released bytes are free again");
    }

    #[test]
    fn one_frame_above_the_budget_goes_to_an_idle_session() {
        let o = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 100_000,
        });
        assert!(o.push(frame(50)), "the subscribed reply");
        assert!(
            o.push(frame(200_000)),
            "a big snapshot right behind it is not refused"
        );
        assert!(!o.push(frame(10)), "but nothing fits behind that");
    }

    #[test]
    fn the_frame_cap_closes_too() {
        let o = Outbox::new(OutboxLimits {
            frames: 2,
            bytes: 1 << 20,
        });
        assert!(o.push(frame(1)) && o.push(frame(1)));
        assert!(!o.push(frame(1)));
        assert_eq!(
            o.closing(),
            Some(Closing::Server {
                code: 1013,
                reason: "send queue full"
            })
        );
    }

    #[test]
    fn control_frames_come_first_and_stop_after_our_close() {
        let o = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 1 << 20,
        });
        assert!(o.push(frame(10)));
        o.push_control(Bytes::from_static(b"pong"));
        let (control, data, next) = take_all(&o);
        assert_eq!(control, vec![Bytes::from_static(b"pong")]);
        assert_eq!(data.len(), 1);
        assert!(matches!(next, Next::Write { offset: 0 }));
        for _ in 0..20 {
            o.push_control(Bytes::from_static(b"pong"));
        }
        assert_eq!(
            take_all(&o).0.len(),
            CONTROL_FRAMES,
            "the control lane is bounded"
        );
        o.close(Closing::Server {
            code: 1000,
            reason: "",
        });
        assert!(matches!(take_all(&o).2, Next::Close(_)));
        o.push_control(Bytes::from_static(b"\x88\x00"));
        let (control, _, next) = take_all(&o);
        assert!(control.is_empty(), "nothing after our close frame");
        assert!(matches!(next, Next::Done));
    }

    #[test]
    fn a_peer_close_sends_the_reply_and_no_close_of_ours() {
        let o = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 1 << 20,
        });
        assert!(o.push(frame(10)));
        // A slow-client close begins, then the client's close frame is answered before ours
        // was taken: the reply is the last frame, ours never goes.
        o.close(Closing::Server {
            code: 1013,
            reason: "send queue full",
        });
        o.push_control(Bytes::from_static(b"\x8a\x00"));
        o.push_control(Bytes::from_static(b"\x88\x02\x03\xe8"));
        o.push_control(Bytes::from_static(b"\x8a\x00"));
        assert_eq!(o.closing(), Some(Closing::Peer));
        let (control, data, next) = take_all(&o);
        assert_eq!(
            control.len(),
            2,
            "the pong, then the close reply; nothing after it"
        );
        assert_eq!(control[1][0], 0x88);
        assert!(data.is_empty());
        assert!(matches!(next, Next::Done));
    }

    #[test]
    fn the_first_reason_wins_but_abort_overrides() {
        let o = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 1 << 20,
        });
        o.close(Closing::Server {
            code: 1001,
            reason: "server shutting down",
        });
        o.close(Closing::Server {
            code: 1013,
            reason: "",
        });
        assert_eq!(
            o.closing(),
            Some(Closing::Server {
                code: 1001,
                reason: "server shutting down"
            })
        );
        o.close(Closing::Abort);
        assert_eq!(o.closing(), Some(Closing::Abort));
    }

    #[tokio::test]
    async fn a_wake_up_is_never_lost() {
        let o = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 1 << 20,
        });
        assert!(o.push(frame(1)));
        // Nobody waited when it was pushed; the wake-up is kept.
        tokio::time::timeout(std::time::Duration::from_secs(1), o.changed())
            .await
            .expect("woken");
    }
}
