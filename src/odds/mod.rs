//! The pure domain: no I/O, unit- and property-tested without any server.
//!
//! - [`hybrid`]: the hybrid-odds formula (docs/PROTOCOL.md).
//! - [`event`]: the EVENT object and channel messages (docs/PROTOCOL.md).
//! - [`book`]: the published state and the diff that yields the next message.

pub mod book;
pub mod event;
pub mod hybrid;

pub use book::{Book, Delta, net_removals};
pub use event::{
    ChannelMessage, Event, EventInput, EventView, Heartbeat, OddsMessage, OddsMessageRef, Outcome,
    SportDelta, sport_key,
};
pub use hybrid::{OddsParams, OddsSource, OutcomeInput, Priced, Unusable, price_event};
