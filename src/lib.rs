//! oddsfeed: sports odds from PostgreSQL to thousands of browsers, through Redis.
//!
//! The flow runs one way (reference: `docs/PROTOCOL.md`):
//!
//! ```text
//! PostgreSQL ─(sql/changed_events.sql every tick or at once on NOTIFY; sql/active_events.sql on a full read)─▶ publisher::source
//!   ─▶ odds::hybrid (pure) ─▶ odds::book (published state, diff) ─▶ bus::redis
//!   (WATCH meta; MULTI HSET/HDEL state, HSET meta, PUBLISH sports-odds; EXEC)
//!   ─▶ broadcaster::relay (copy of the book, seq check, resync from the state keys)
//!   ─▶ broadcaster::rooms (sport:all, sport:<key>, event:<id>, bridged; shared frames)
//!   ─▶ broadcaster::fanout (threads writing room frames into sockets that keep up)
//!   ─▶ broadcaster::session (one task per socket: read side, outbox, writer for the rest)
//! ```
//!
//! Module map:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the one `Config` (clap + env), subcommands, documented defaults |
//! | [`odds`] | pure domain: [`odds::hybrid`] formula, [`odds::event`] wire types, [`odds::book`] state + diff |
//! | [`publisher`] | [`publisher::source`] SQL reads (all, or changed) grouped by event id, [`publisher::decode`] tolerant column decoding, [`publisher::scheduler`] tick loop (which read, one transaction per tick, resync check), [`publisher::leader`] advisory lock under a lease, [`publisher::control`] HTTP start/stop/status |
//! | [`broadcaster`] | [`broadcaster::relay`] Redis → hub, [`broadcaster::inbox`] its bounded queue, [`broadcaster::rooms`] hub and fan-out, [`broadcaster::room_name`] odds room names, [`broadcaster::admission`] caps, [`broadcaster::upgrade`] handshake, [`broadcaster::session`] one connection's life, [`broadcaster::outbox`] bounded send queue and who writes the socket, [`broadcaster::fanout`] threads that write room frames into the sockets of clients that keep up, [`broadcaster::writer`] a client's own writes and deadlines, [`broadcaster::frame`] encoded frames, [`broadcaster::changes`] the changes format, [`broadcaster::deflate`] and [`broadcaster::inflate`] permessage-deflate, [`broadcaster::protocol`] messages, [`broadcaster::auth`] JWT, [`broadcaster::socketio`] the Socket.IO endpoint with [`broadcaster::socketio_feed`] its ordered feed from the hub; also serves the odds board (`web/board.html`) at `/` |
//! | [`bus`] | [`bus::redis`]: fenced MULTI/EXEC publish with the state keys, heartbeats, state loading |
//! | [`net`] | [`net::listener`] accept loop and the life of a connection before it upgrades (timeouts, pending cap, backlog, TLS), [`net::client_addr`] client address behind trusted proxies, [`net::open_files`] descriptor limit, [`net::tls`] certificates, [`net::shared_tcp`] one socket read and written through shared handles |
//! | [`http`] | `/health`, `/metrics`, the dependency probe, the HTTP error type |
//! | [`db`] | PostgreSQL connect options, lazy pool, migrations |
//! | [`telemetry`] | tracing setup, Prometheus recorder, every metric name |
//! | [`sim`] | demo data: sports, leagues and teams; [`sim::play`] how a match is played and shown, [`sim::inplay`] the in-play pricing model (pure), [`sim::fixtures`] the calendar, [`sim::seed`] the data set, [`sim::simulate`] live activity |
//! | [`supervisor`] | restarts a long-running task that panicked or exited, counts it, reports it to `/health` |
//! | [`app`] | wiring of the subcommands, plain or TLS listener, graceful shutdown |

pub mod app;
pub mod broadcaster;
pub mod bus;
pub mod config;
pub mod db;
pub mod http;
pub mod net;
pub mod odds;
pub mod publisher;
pub mod sim;
pub mod supervisor;
pub mod telemetry;
