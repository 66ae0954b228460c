//! The room registry and fan-out: the broadcaster's copy of the book, the odds rooms with their
//! seq and replay buffers, bridged rooms, and every session's bounded send queue.
//!
//! One mutex guards the book and the rooms together. That is what makes a subscription exact:
//! the snapshot (or the replayed messages) and joining the room happen in one critical section,
//! so no message can fall between them or be delivered twice. Every frame is serialised once
//! per room (WebSocket header included) and the same bytes are queued for every member; a
//! member whose queue is full is closed with 1013 instead of slowing the room down. Queuing is
//! all the lock covers: the writes happen after it is released, on the fan-out threads
//! ([`super::fanout`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{counter, gauge};
use serde_json::Value;

use super::fanout::Fanout;
use super::frame::WireFrame;
use super::outbox::{Outbound, Outbox};
use super::protocol::{ErrorCode, Rejection, ServerMessage, Upsert};
use super::room_name::OddsRoom;
use super::socketio_feed::{Feed, FeedItem, SocketId, SportChange};
use crate::bus::StoredState;
use crate::odds::{Book, Delta, Event, OddsMessage, net_removals};
use crate::telemetry as m;

/// Identifies one WebSocket connection within this process.
pub type ClientId = u64;

/// What kind of room a frame comes from, for the latency histogram's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// `sport:all`.
    All,
    /// `sport:<key>`.
    Sport,
    /// `event:<id>`.
    Event,
    /// A room fed by a bridged channel.
    Bridged,
    /// A reply to one client.
    Reply,
}

impl RoomKind {
    pub fn label(self) -> &'static str {
        match self {
            RoomKind::All => "all",
            RoomKind::Sport => "sport",
            RoomKind::Event => "event",
            RoomKind::Bridged => "bridged",
            RoomKind::Reply => "reply",
        }
    }

    /// The kind of an odds room.
    pub fn of(room: &OddsRoom) -> RoomKind {
        match room {
            OddsRoom::All => RoomKind::All,
            OddsRoom::Sport(_) => RoomKind::Sport,
            OddsRoom::Event(_) => RoomKind::Event,
        }
    }
}

/// How a session is reached: its id and its bounded outbox.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: ClientId,
    pub outbox: Arc<Outbox>,
    /// How this client takes room frames.
    pub format: WireFormat,
}

/// How a client takes room frames: negotiated at the upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireFormat {
    /// Live `odds` messages in the `changes` format ([`super::changes`]).
    pub changes: bool,
    /// permessage-deflate ([`super::deflate`]): room frames and snapshots compressed.
    pub deflate: bool,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionHandle({})", self.id)
    }
}

impl SessionHandle {
    /// Queues a frame; a session over its budget is closed as a slow client (1013).
    pub fn send(&self, frame: Outbound) -> bool {
        self.outbox.push(frame)
    }
}

/// A replayable frame of an odds room.
#[derive(Debug, Clone)]
struct Buffered {
    seq: u64,
    frame: Outbound,
}

/// One room.
#[derive(Debug)]
struct Room {
    kind: RoomKind,
    /// The odds room this is, parsed once (`None` for bridged and private rooms).
    odds: Option<OddsRoom>,
    /// Odds rooms: seq of the last message (the sport's seq, the global seq, or the event's
    /// version).
    seq: u64,
    members: HashMap<ClientId, SessionHandle>,
    /// Members that take the `changes` format: while there are none, it is not encoded.
    changes_members: usize,
    /// Odds rooms: the last messages, for resume.
    replay: VecDeque<Buffered>,
    replay_bytes: usize,
    /// Odds rooms: the serialised snapshot at (epoch, seq), shared by everyone joining at once.
    /// With it, once asked for, the same snapshot compressed for members with
    /// permessage-deflate (so the two can never be of different positions).
    snapshot: Option<(u64, WireFrame, Option<WireFrame>)>,
}

impl Room {
    fn new(kind: RoomKind, odds: Option<OddsRoom>) -> Self {
        Self {
            kind,
            odds,
            seq: 0,
            members: HashMap::new(),
            changes_members: 0,
            replay: VecDeque::new(),
            replay_bytes: 0,
            snapshot: None,
        }
    }
}

/// Limits the hub enforces.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Messages kept per odds room for resume.
    pub replay_messages: usize,
    /// Bytes kept per odds room for resume.
    pub replay_bytes: usize,
}

/// Whether an incoming odds message could be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied and fanned out.
    Yes,
    /// Already reflected (a message published before the state was loaded): ignored.
    Duplicate,
    /// A seq is missing: the state must be reloaded.
    Gap { expected: u64, got: u64 },
    /// A stream this hub has no state of (none loaded yet, or a new epoch: a new publisher's
    /// stream, not a fault): the state must be loaded.
    NewStream,
}

struct Inner {
    /// The broadcaster's copy of the published state; `None` until the first load.
    book: Option<Book>,
    rooms: HashMap<String, Room>,
    /// False after 3 heartbeat intervals without a message from the publisher.
    publisher_live: bool,
    /// Sessions and the rooms they are in, for `rooms` and cleanup.
    sessions: HashMap<ClientId, HashSet<String>>,
    /// Outboxes that got room frames in this critical section, for the fan-out once the lock
    /// is released.
    due: Vec<Arc<Outbox>>,
    /// The Socket.IO endpoint's feed, fed in this lock's order (`None` when it is off).
    socketio: Option<Feed>,
    /// The book as a Socket.IO list (publishing order), shared by every join at that seq.
    socketio_list: Option<(u64, Arc<Vec<Event>>)>,
}

/// The shared registry. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    limits: HubLimits,
    fanout: Fanout,
}

fn publishing_order(a: &&Event, b: &&Event) -> std::cmp::Ordering {
    b.view
        .live
        .cmp(&a.view.live)
        .then_with(|| match (a.view.start_time, b.view.start_time) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
        .then_with(|| a.id.cmp(&b.id))
}

impl Inner {
    fn epoch(&self) -> &str {
        self.book.as_ref().map_or("", Book::epoch)
    }

    /// The current seq of an odds room, computed from the book (0 before anything was
    /// published there).
    fn odds_room_seq(&self, room: &OddsRoom) -> u64 {
        let Some(book) = &self.book else { return 0 };
        match room {
            OddsRoom::All => book.seq(),
            OddsRoom::Sport(key) => book.sport_seqs().get(key).copied().unwrap_or(0),
            OddsRoom::Event(id) => book.event_seq(id),
        }
    }

    /// The compressed form of a room's snapshot `plain` (just taken from `snapshot_frame`),
    /// compressed once per cached snapshot.
    fn deflated_snapshot(&mut self, name: &str, plain: &WireFrame) -> WireFrame {
        match self.rooms.get_mut(name).and_then(|r| r.snapshot.as_mut()) {
            Some((_, _, deflated)) => deflated.get_or_insert_with(|| plain.deflated()).clone(),
            None => plain.deflated(),
        }
    }

    fn snapshot_frame(&mut self, room: &OddsRoom, name: &str) -> Outbound {
        let seq = self.odds_room_seq(room);
        let kind = RoomKind::of(room);
        if let Some(Room {
            snapshot: Some((cached_seq, frame, _)),
            ..
        }) = self.rooms.get(name)
            && *cached_seq == seq
        {
            return Outbound {
                frame: frame.clone(),
                published_at: None,
                kind,
            };
        }
        let epoch = self.epoch().to_string();
        let mut events: Vec<&Event> = match (&self.book, room) {
            (Some(book), OddsRoom::All) => book.events().collect(),
            (Some(book), OddsRoom::Sport(key)) => {
                book.events().filter(|e| e.view.sport == *key).collect()
            }
            (Some(book), OddsRoom::Event(id)) => book.get(id).into_iter().collect(),
            (None, _) => Vec::new(),
        };
        events.sort_by(publishing_order);
        let frame = WireFrame::json(&ServerMessage::Snapshot {
            room: name,
            epoch: &epoch,
            seq,
            events,
        });
        if let Some(r) = self.rooms.get_mut(name) {
            r.snapshot = Some((seq, frame.clone(), None));
        }
        Outbound {
            frame,
            published_at: None,
            kind,
        }
    }

    /// Delivers a frame to every member of a room (`changes`, when given, to the members that
    /// take that format), buffering the full frame for resume when `seq` is set.
    fn deliver(
        &mut self,
        room: &str,
        frame: Outbound,
        changes: Option<Outbound>,
        seq: Option<u64>,
        limits: &HubLimits,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(seq) = seq {
            r.seq = seq;
            r.snapshot = None;
            r.replay_bytes += frame.frame.len();
            r.replay.push_back(Buffered {
                seq,
                frame: frame.clone(),
            });
            while r.replay.len() > limits.replay_messages || r.replay_bytes > limits.replay_bytes {
                match r.replay.pop_front() {
                    Some(old) => r.replay_bytes -= old.frame.frame.len(),
                    None => break,
                }
            }
        }
        let (mut sent, mut bytes) = (0u64, 0u64);
        // Compressed once per room, when the first member that negotiated deflate needs it.
        let (mut frame_z, mut changes_z): (Option<Outbound>, Option<Outbound>) = (None, None);
        for member in r.members.values() {
            let (plain, compressed) = match &changes {
                Some(c) if member.format.changes => (c, &mut changes_z),
                _ => (&frame, &mut frame_z),
            };
            let f = if member.format.deflate {
                compressed.get_or_insert_with(|| Outbound {
                    frame: plain.frame.deflated(),
                    ..plain.clone()
                })
            } else {
                plain
            };
            if member.outbox.push_fanout(f.clone(), &mut self.due) {
                sent += 1;
                bytes += f.frame.len() as u64;
            }
        }
        if sent > 0 {
            counter!(m::WS_MESSAGES_SENT, "kind" => frame.kind.label()).increment(sent);
            counter!(m::WS_BYTES_SENT).increment(bytes);
        }
    }

    fn update_gauges(&self) {
        gauge!(m::WS_ROOMS).set(
            self.rooms
                .values()
                .filter(|r| !r.members.is_empty())
                .count() as f64,
        );
        gauge!(m::WS_SUBSCRIPTIONS)
            .set(self.rooms.values().map(|r| r.members.len()).sum::<usize>() as f64);
    }
}

impl Hub {
    pub fn new(limits: HubLimits, fanout: Fanout) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                book: None,
                rooms: HashMap::new(),
                publisher_live: true,
                sessions: HashMap::new(),
                due: Vec::new(),
                socketio: None,
                socketio_list: None,
            })),
            limits,
            fanout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the data consistent before any call that could panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock, then hands what was queued under it to the fan-out.
    fn unlock_and_flush(&self, mut inner: MutexGuard<'_, Inner>) {
        let due = std::mem::take(&mut inner.due);
        drop(inner);
        self.fanout.flush(due);
    }

    /// Starts feeding the Socket.IO endpoint; returns what it reads.
    pub fn attach_socketio(&self) -> super::socketio_feed::FeedReceiver {
        let (feed, rx) = Feed::new();
        self.lock().socketio = Some(feed);
        rx
    }

    /// A Socket.IO socket joins the global list (`sport` `None`) or a sport's: the feed gets
    /// the events it holds now, in publishing order, and every change after them. False when
    /// the feed is full (the caller tries again later).
    pub fn socketio_join(&self, socket: SocketId, sport: Option<String>) -> bool {
        let mut inner = self.lock();
        let events = socketio_list(&mut inner);
        match inner.socketio.as_mut() {
            Some(feed) => feed.push(FeedItem::Join {
                socket,
                sport,
                events,
            }),
            None => false,
        }
    }

    /// A Socket.IO socket leaves a sport's room, in order with its joins.
    pub fn socketio_leave(&self, socket: SocketId, sport: String) {
        if let Some(feed) = self.lock().socketio.as_mut() {
            feed.push(FeedItem::Leave { socket, sport });
        }
    }

    /// Registers a session. It leaves every room when the returned guard drops, however the
    /// session ends (a panic included), so no session outlives its connection in the hub.
    pub fn connect(&self, id: ClientId) -> Membership {
        self.lock().sessions.insert(id, HashSet::new());
        Membership {
            hub: self.clone(),
            id,
        }
    }

    /// Removes a session from every room.
    fn disconnect(&self, id: ClientId) {
        let mut inner = self.lock();
        let rooms = inner.sessions.remove(&id).unwrap_or_default();
        for room in rooms {
            leave(&mut inner, &room, id);
        }
        inner.update_gauges();
    }

    pub fn connections(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Rooms a session is in, sorted.
    pub fn rooms_of(&self, id: ClientId) -> Vec<String> {
        let inner = self.lock();
        let mut rooms: Vec<String> = inner
            .sessions
            .get(&id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        rooms.sort();
        rooms
    }

    /// The current epoch and global seq, if a stream has been loaded.
    pub fn position(&self) -> Option<(String, u64)> {
        let inner = self.lock();
        inner
            .book
            .as_ref()
            .map(|b| (b.epoch().to_string(), b.seq()))
    }

    pub fn publisher_live(&self) -> bool {
        self.lock().publisher_live
    }

    /// Joins a room. For an odds room the reply is followed, in order, by a snapshot, or by
    /// the missed messages when `resume` names a seq still in the replay buffer, or by nothing
    /// when the client is already up to date. Access rules are the caller's.
    ///
    /// `odds` is the parsed odds room `room` names (`None` for bridged and private rooms). An
    /// odds room need not have anything in it yet: its snapshot is then empty (seq 0 before
    /// anything was published there) and its events arrive as they are published.
    pub fn subscribe(
        &self,
        session: &SessionHandle,
        room: &str,
        odds: Option<&OddsRoom>,
        resume: Option<(String, u64)>,
        id: Option<&Value>,
        max_rooms: usize,
    ) -> Result<(), Rejection> {
        let mut inner = self.lock();
        let kind = odds.map(RoomKind::of);
        let already = inner
            .sessions
            .get(&session.id)
            .is_some_and(|r| r.contains(room));
        if !already
            && inner
                .sessions
                .get(&session.id)
                .is_some_and(|r| r.len() >= max_rooms)
        {
            return Err(Rejection::new(
                ErrorCode::TooManyRooms,
                format!("at most {max_rooms} rooms per connection"),
                id.cloned(),
            ));
        }
        session.send(Outbound::reply(WireFrame::json(
            &ServerMessage::Subscribed { room, id },
        )));
        if let Some(odds) = odds {
            let seq = inner.odds_room_seq(odds);
            let epoch = inner.epoch().to_string();
            let room_entry = inner
                .rooms
                .entry(room.to_string())
                .or_insert_with(|| Room::new(RoomKind::of(odds), Some(odds.clone())));
            if room_entry.seq == 0 {
                room_entry.seq = seq;
            }
            let replay: Option<Vec<Outbound>> = match &resume {
                Some((e, from)) if *e == epoch && *from == seq => Some(Vec::new()),
                Some((e, from)) if *e == epoch && *from < seq => {
                    let missed: Vec<Outbound> = room_entry
                        .replay
                        .iter()
                        .filter(|b| b.seq > *from)
                        .map(|b| b.frame.clone())
                        .collect();
                    let first = room_entry
                        .replay
                        .iter()
                        .find(|b| b.seq > *from)
                        .map(|b| b.seq);
                    (first == Some(from + 1) && missed.len() as u64 == seq - from).then_some(missed)
                }
                _ => None,
            };
            match replay {
                Some(missed) => {
                    counter!(m::WS_RESUMES, "result" => if missed.is_empty() { "current" } else { "replayed" })
                        .increment(1);
                    for frame in missed {
                        session.send(frame);
                    }
                }
                None => {
                    if resume.is_some() {
                        counter!(m::WS_RESUMES, "result" => "snapshot").increment(1);
                    }
                    let mut frame = inner.snapshot_frame(odds, room);
                    if session.format.deflate {
                        frame.frame = inner.deflated_snapshot(room, &frame.frame);
                    }
                    session.send(frame);
                }
            }
            if !inner.publisher_live {
                session.send(Outbound::reply(WireFrame::json(&ServerMessage::Status {
                    room,
                    publisher: "stale",
                })));
            }
        }
        let room_kind = kind.unwrap_or(RoomKind::Bridged);
        let entry = inner
            .rooms
            .entry(room.to_string())
            .or_insert_with(|| Room::new(room_kind, odds.cloned()));
        if entry.members.insert(session.id, session.clone()).is_none() && session.format.changes {
            entry.changes_members += 1;
        }
        inner
            .sessions
            .entry(session.id)
            .or_default()
            .insert(room.to_string());
        inner.update_gauges();
        Ok(())
    }

    /// Leaves a room; returns whether the session was in it.
    pub fn unsubscribe(&self, id: ClientId, room: &str) -> bool {
        let mut inner = self.lock();
        let was = inner.sessions.get_mut(&id).is_some_and(|r| r.remove(room));
        if was {
            leave(&mut inner, room, id);
        }
        inner.update_gauges();
        was
    }

    /// Replaces the book with a state loaded from Redis and brings every odds room's members
    /// to it: a fresh snapshot wherever the room's position changed.
    ///
    /// A Redis that comes back empty has lost the state, not the stream: the book is kept
    /// (clients keep what they have) until the publisher writes the state again.
    pub fn resync(&self, state: Option<StoredState>) {
        let mut inner = self.lock();
        let Some(state) = state else {
            if inner.book.is_some() {
                tracing::warn!(
                    "the Redis state is gone; keeping the last known book until the publisher rewrites it"
                );
            }
            return;
        };
        let old_epoch = inner.epoch().to_string();
        let old = inner.book.replace(state.into_book());
        let new_epoch = inner.epoch().to_string();
        if inner.socketio.is_some() {
            let gone: Vec<Event> = match (&old, &inner.book) {
                (Some(old), Some(new)) => old
                    .events()
                    .filter(|e| new.get(&e.id).is_none())
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            feed_reset(&mut inner, gone);
        }
        let names: Vec<(String, OddsRoom)> = inner
            .rooms
            .iter()
            .filter_map(|(n, r)| Some((n.clone(), r.odds.clone()?)))
            .collect();
        for (name, odds) in names {
            let seq = inner.odds_room_seq(&odds);
            let (unchanged, has_members) = match inner.rooms.get(&name) {
                Some(r) => (
                    old_epoch == new_epoch && r.seq == seq,
                    !r.members.is_empty(),
                ),
                None => continue,
            };
            if unchanged {
                continue;
            }
            if let Some(r) = inner.rooms.get_mut(&name) {
                r.replay.clear();
                r.replay_bytes = 0;
                r.snapshot = None;
                r.seq = seq;
            }
            if has_members {
                let frame = inner.snapshot_frame(&odds, &name);
                inner.deliver(&name, frame, None, None, &self.limits);
            }
        }
        self.unlock_and_flush(inner);
    }

    /// Applies one odds message to the book and fans it out to the odds rooms. The message's
    /// events move into the book once every frame is serialised.
    pub fn apply(&self, msg: OddsMessage) -> Applied {
        let mut inner = self.lock();
        let Some(book) = &inner.book else {
            return Applied::NewStream;
        };
        if book.epoch() != msg.epoch {
            return Applied::NewStream;
        }
        if msg.seq <= book.seq() {
            return Applied::Duplicate;
        }
        if msg.seq != book.seq() + 1 {
            return Applied::Gap {
                expected: book.seq() + 1,
                got: msg.seq,
            };
        }
        let published_at = Some(msg.published_at);
        let epoch = msg.epoch.as_str();

        // What each room gets: (room, its name, seq, upserts, removals, kind).
        type Planned<'m> = (
            OddsRoom,
            String,
            u64,
            Vec<&'m Event>,
            Vec<&'m str>,
            RoomKind,
        );
        let mut planned: Vec<Planned<'_>> = Vec::new();
        // sport:all: every change; an event that moved sport is only upserted.
        let all_removals = net_removals(&msg.sports);
        planned.push((
            OddsRoom::All,
            "sport:all".into(),
            msg.seq,
            msg.sports.values().flat_map(|b| &b.upserts).collect(),
            all_removals.clone(),
            RoomKind::All,
        ));
        for (sport, block) in &msg.sports {
            // The publisher never uses the reserved key; a foreign writer's block for it must
            // not be mixed into the global room.
            let Some(odds) = OddsRoom::for_sport(sport) else {
                counter!(m::RELAY_DROPPED, "reason" => "reserved_sport_key").increment(1);
                continue;
            };
            let room = odds.name();
            planned.push((
                odds,
                room,
                block.seq,
                block.upserts.iter().collect(),
                block.removals.iter().map(String::as_str).collect(),
                RoomKind::Sport,
            ));
        }
        // event:<id> rooms exist only while someone is in them (so the room is never created
        // here, and nothing is allocated for an event nobody follows beyond its name).
        for event in msg.sports.values().flat_map(|b| &b.upserts) {
            let room = format!("event:{}", event.id);
            if let Some(odds) = inner.rooms.get(&room).and_then(|r| r.odds.clone()) {
                planned.push((
                    odds,
                    room,
                    event.version,
                    vec![event],
                    vec![],
                    RoomKind::Event,
                ));
            }
        }
        for id in &all_removals {
            let room = format!("event:{id}");
            if let Some(r) = inner.rooms.get(&room)
                && let Some(odds) = r.odds.clone()
            {
                // The publisher numbers the removal; a message without the number (an older
                // publisher) is counted on from the room.
                let seq = msg
                    .sports
                    .values()
                    .find_map(|b| b.removal_versions.get(*id).copied())
                    .unwrap_or(r.seq + 1);
                planned.push((odds, room, seq, vec![], vec![id], RoomKind::Event));
            }
        }

        // The `changes` form of each upsert, against the book before this message; only
        // while some room that gets it has a member that takes it.
        let wants_changes =
            |room: &str| inner.rooms.get(room).is_some_and(|r| r.changes_members > 0);
        let mut changed: HashMap<&str, Value> = HashMap::new();
        if planned.iter().any(|p| wants_changes(&p.1)) {
            let book = inner.book.as_ref();
            for event in msg.sports.values().flat_map(|b| &b.upserts) {
                let old = book.and_then(|b| b.get(&event.id));
                changed.insert(event.id.as_str(), super::changes::upsert(old, event));
            }
        }
        let mut frames: Vec<(OddsRoom, String, Outbound, Option<Outbound>, u64)> =
            Vec::with_capacity(planned.len());
        for (odds, room, seq, upserts, removals, kind) in planned {
            let encode = |format: Option<&'static str>, upserts: Vec<Upsert<'_>>| Outbound {
                frame: WireFrame::json(&ServerMessage::Odds {
                    room: &room,
                    epoch,
                    seq,
                    published_at: msg.published_at,
                    published_at_us: msg.published_at_us,
                    format,
                    upserts,
                    removals: removals.clone(),
                }),
                published_at,
                kind,
            };
            let changes = wants_changes(&room).then(|| {
                let patches = upserts
                    .iter()
                    .filter_map(|e| changed.get(e.id.as_str()).map(Upsert::Changes))
                    .collect();
                encode(Some("changes"), patches)
            });
            let full = encode(None, upserts.into_iter().map(Upsert::Whole).collect());
            frames.push((odds, room, full, changes, seq));
        }
        drop(changed);

        let lost = inner.socketio.as_ref().map(|f| f.lost);
        let all_removals_events: Vec<Event> = match (lost, inner.book.as_ref()) {
            (Some(true), Some(book)) => all_removals
                .iter()
                .filter_map(|id| book.get(id).cloned())
                .collect(),
            _ => Vec::new(),
        };
        if lost == Some(false) {
            let item = feed_odds(
                inner.book.as_ref(),
                &msg.sports,
                &all_removals,
                msg.published_at,
            );
            if let Some(feed) = inner.socketio.as_mut() {
                feed.push(item);
            }
        }
        if let Some(book) = inner.book.as_mut() {
            book.apply(Delta {
                seq: msg.seq,
                sports: msg.sports,
            });
        }
        if lost == Some(true) {
            counter!(m::SOCKETIO_FEED_RESETS).increment(1);
            // This message's removals too: the reset replaces it.
            let mut gone: Vec<Event> = all_removals_events;
            if let Some(feed) = inner.socketio.as_mut() {
                gone.extend(feed.removed.drain().map(|(_, e)| e));
            }
            feed_reset(&mut inner, gone);
        }
        for (odds, room, full, changes, seq) in frames {
            let kind = full.kind;
            inner
                .rooms
                .entry(room.clone())
                .or_insert_with(|| Room::new(kind, Some(odds)));
            inner.deliver(&room, full, changes, Some(seq), &self.limits);
        }
        self.unlock_and_flush(inner);
        Applied::Yes
    }

    /// Sends a bridged message to the members of `room` (dropped when nobody is in it).
    pub fn bridged(&self, channel: &str, room: &str, data: &Value) {
        let mut inner = self.lock();
        if let Some(feed) = inner.socketio.as_mut() {
            feed.push(FeedItem::Bridged {
                channel: channel.to_string(),
                data: data.clone(),
            });
        }
        if inner.rooms.get(room).is_none_or(|r| r.members.is_empty()) {
            return;
        }
        let frame = Outbound {
            frame: WireFrame::json(&ServerMessage::Message {
                room,
                channel,
                data,
            }),
            published_at: None,
            kind: RoomKind::Bridged,
        };
        inner.deliver(room, frame, None, None, &self.limits);
        self.unlock_and_flush(inner);
    }

    /// Records whether the publisher is live and tells every odds room when that changes.
    pub fn set_publisher_live(&self, live: bool) {
        let mut inner = self.lock();
        if inner.publisher_live == live {
            return;
        }
        inner.publisher_live = live;
        let publisher = if live { "live" } else { "stale" };
        let rooms: Vec<String> = inner
            .rooms
            .iter()
            .filter(|(_, r)| r.kind != RoomKind::Bridged && !r.members.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for room in rooms {
            let frame = Outbound::reply(WireFrame::json(&ServerMessage::Status {
                room: &room,
                publisher,
            }));
            inner.deliver(&room, frame, None, None, &self.limits);
        }
        self.unlock_and_flush(inner);
    }

    /// Per-room seqs of the current book, for tests and /health.
    pub fn room_seqs(&self) -> BTreeMap<String, u64> {
        let inner = self.lock();
        inner
            .rooms
            .iter()
            .filter(|(_, r)| r.kind != RoomKind::Bridged)
            .map(|(n, r)| (n.clone(), r.seq))
            .collect()
    }
}

/// The book as a Socket.IO list in publishing order, built once per seq and shared.
fn socketio_list(inner: &mut Inner) -> Arc<Vec<Event>> {
    let seq = inner.book.as_ref().map_or(0, Book::seq);
    if let Some((cached, list)) = &inner.socketio_list
        && *cached == seq
    {
        return list.clone();
    }
    let mut events: Vec<&Event> = inner.book.iter().flat_map(Book::events).collect();
    events.sort_by(publishing_order);
    let list: Arc<Vec<Event>> = Arc::new(events.into_iter().cloned().collect());
    inner.socketio_list = Some((seq, list.clone()));
    list
}

/// Sends the Socket.IO clients the whole book as their new list (after a reload, or when the
/// feed dropped something), with the events that went away meanwhile.
fn feed_reset(inner: &mut Inner, removed: Vec<Event>) {
    if inner.book.is_none() {
        return;
    }
    // A reload may keep the seq with other content: never reuse the cached list here.
    inner.socketio_list = None;
    let events = socketio_list(inner);
    if let Some(feed) = inner.socketio.as_mut() {
        feed.lost = false;
        feed.push(FeedItem::Reset { events, removed });
    }
}

/// The Socket.IO form of an odds message, with removed events in their last published form
/// from `book` (before the message is applied).
fn feed_odds(
    book: Option<&Book>,
    sports: &BTreeMap<String, crate::odds::SportDelta>,
    all_removals: &[&str],
    published_at_ms: i64,
) -> FeedItem {
    let last = |id: &str| book.and_then(|b| b.get(id)).cloned();
    FeedItem::Odds {
        published_at: chrono::DateTime::from_timestamp_millis(published_at_ms).unwrap_or_default(),
        sports: sports
            .iter()
            .map(|(key, block)| SportChange {
                key: key.clone(),
                upserts: block.upserts.clone(),
                removed: block.removals.iter().filter_map(|id| last(id)).collect(),
            })
            .collect(),
        all_removed: all_removals.iter().filter_map(|id| last(id)).collect(),
    }
}

/// A session's place in the hub; dropping it removes the session from every room.
pub struct Membership {
    hub: Hub,
    id: ClientId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.disconnect(self.id);
    }
}

fn leave(inner: &mut Inner, room: &str, id: ClientId) {
    let Some(r) = inner.rooms.get_mut(room) else {
        return;
    };
    if r.members.remove(&id).is_some_and(|m| m.format.changes) {
        r.changes_members -= 1;
    }
    // Rooms of real sports stay (their replay buffer serves resumes); every other room goes
    // when its last member leaves, so rooms clients name cost nothing once empty.
    let remove = r.members.is_empty()
        && match &r.odds {
            Some(OddsRoom::All) => false,
            Some(OddsRoom::Sport(key)) => !inner
                .book
                .as_ref()
                .is_some_and(|b| b.sport_seqs().contains_key(key)),
            _ => true,
        };
    if remove {
        inner.rooms.remove(room);
    }
}
