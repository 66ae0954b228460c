//! Connection admission: the total and per-address caps and the Origin allow-list, with a
//! guard that gives the place back when the connection ends, however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use metrics::gauge;

use crate::telemetry as m;

/// Connection admission: total and per-IP caps, and the Origin allow-list.
pub struct Admission {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Exact origins allowed (`https://app.example.com`); empty allows any.
    pub allowed_origins: Vec<String>,
    /// Open connections by client address.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Open connections in all.
    total: std::sync::atomic::AtomicUsize,
}

impl Admission {
    pub fn new(
        max_connections: usize,
        max_connections_per_ip: usize,
        allowed_origins: Vec<String>,
    ) -> Self {
        Self {
            max_connections,
            max_connections_per_ip,
            allowed_origins,
            open: Mutex::new(HashMap::new()),
            total: Default::default(),
        }
    }

    /// Why a connection from `ip` would be refused now, if it would.
    fn full(
        &self,
        open: &HashMap<IpAddr, usize>,
        ip: IpAddr,
    ) -> Result<(), (StatusCode, &'static str, String)> {
        if self.total.load(Ordering::SeqCst) >= self.max_connections {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the server holds its maximum of {} connections",
                    self.max_connections
                ),
            ));
        }
        if open.get(&ip).copied().unwrap_or(0) >= self.max_connections_per_ip {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_from_address",
                format!(
                    "at most {} connections per address",
                    self.max_connections_per_ip
                ),
            ));
        }
        Ok(())
    }

    /// Whether a connection from `ip` would be admitted now, without taking a place (a check
    /// before a handshake whose connection takes its place later).
    pub fn has_room(&self, ip: IpAddr) -> Result<(), (StatusCode, &'static str, String)> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        self.full(&open, ip)
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<ConnectionGuard, (StatusCode, &'static str, String)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        self.full(&open, ip)?;
        let count = open.entry(ip).or_insert(0);
        *count += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        gauge!(m::WS_CONNECTIONS).increment(1.0);
        Ok(ConnectionGuard {
            admission: self.clone(),
            ip,
        })
    }
}

/// Releases a connection's place when the session ends, however it ends.
pub struct ConnectionGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::SeqCst);
        gauge!(m::WS_CONNECTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back_when_guards_drop() {
        let admission = Arc::new(Admission::new(3, 2, Vec::new()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit(a).err().map(|e| e.0),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(
            admission.admit(b).err().map(|e| e.0),
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "the total cap"
        );
        drop(a1);
        assert!(admission.admit(b).is_ok(), "a place freed by a drop");
    }
}
