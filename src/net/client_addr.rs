//! Who a request comes from: the TCP peer, or the client a trusted reverse proxy names.
//!
//! Behind a load balancer every connection's peer is the balancer, so the per-address cap
//! would cap the whole node and the logs would name one address. `TRUSTED_PROXIES` lists the
//! networks whose forwarding headers are believed. For a request from one of them the client
//! is found by walking the forwarding chain from the right (the hop nearest to us), skipping
//! addresses that are themselves trusted: the first untrusted address is the client. A proxy
//! can only vouch for the hop it received the connection from, so anything to the left of
//! the first untrusted hop is the client's own say and is ignored.
//!
//! One header is read, the one the proxies are configured to write (`TRUSTED_PROXY_HEADER`:
//! `X-Forwarded-For` by default, or `Forwarded` (RFC 7239, `for=`), or `X-Real-IP`): a proxy
//! passes the other headers on as the client wrote them, so reading them would let a client
//! name itself. When every hop is trusted, the client is the nearest hop (the one our peer
//! names), never the leftmost entry, which the client may have written. From a peer that is not
//! trusted every forwarding header is ignored, and its presence alone disqualifies the control
//! API's loopback rule: a proxy on the same host that nobody listed must not turn every client
//! it relays into "loopback". A loopback client named by a proxy counts as local only when the
//! proxy itself is on this host (its loopback is ours).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Headers a reverse proxy sets to say whom it relays for. Any of them from an untrusted peer
/// means "relayed by someone we do not know".
pub const FORWARDING_HEADERS: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
];

/// The header trusted proxies write the client address into (`TRUSTED_PROXY_HEADER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx `$proxy_add_x_forwarded_for`, most balancers).
    #[default]
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[value(name = "forwarded")]
    Forwarded,
    /// `X-Real-IP: client` (a single address).
    #[value(name = "x-real-ip")]
    XRealIp,
}

/// The networks whose forwarding headers are believed (`TRUSTED_PROXIES`), and the header
/// they write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ProxyHeader,
}

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`, `::1/128`) or single addresses (`127.0.0.1`). Empty
    /// entries are skipped; a malformed one is an error naming it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        Self::with_header(entries, ProxyHeader::default())
    }

    /// [`TrustedProxies::parse`] for proxies that write `header`.
    pub fn with_header<S: AsRef<str>>(entries: &[S], header: ProxyHeader) -> Result<Self, String> {
        let mut networks = Vec::new();
        for entry in entries.iter().map(|e| e.as_ref().trim()) {
            if entry.is_empty() {
                continue;
            }
            let net = IpNet::from_str(entry)
                .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                .map_err(|_| {
                    format!("TRUSTED_PROXIES: {entry:?} is not an address or a CIDR network")
                })?;
            networks.push(net.trunc());
        }
        Ok(Self { networks, header })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// How the client address was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// No forwarding header: the client is the TCP peer.
    Direct,
    /// A trusted proxy named the client.
    TrustedProxy,
    /// Forwarding headers from a peer that is not trusted: ignored, the client is the peer.
    UntrustedProxy,
    /// A trusted proxy sent no usable address in the configured header: the client is unknown
    /// and the nearest trusted hop stands in for it.
    Unreadable,
}

/// The address a request is attributed to: per-address caps, logs, and the loopback rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client, as far as can be told (see [`Via`]).
    pub ip: IpAddr,
    /// The TCP peer.
    pub peer: SocketAddr,
    pub via: Via,
}

impl ClientAddr {
    /// Resolves the client of a request from `peer` with `headers`.
    pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Self {
        let peer_ip = peer.ip().to_canonical();
        let forwarded = FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
        let direct = |via| Self {
            ip: peer_ip,
            peer,
            via,
        };
        if !forwarded {
            return direct(Via::Direct);
        }
        if !trusted.contains(peer_ip) {
            return direct(Via::UntrustedProxy);
        }
        let Some(chain) = forwarding_chain(headers, trusted.header) else {
            // Only headers the proxies were not configured to write.
            return direct(Via::Unreadable);
        };
        // Walk from the hop nearest to us; the peer is the last hop.
        let mut nearest_trusted = peer_ip;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) if trusted.contains(*ip) => nearest_trusted = *ip,
                Some(ip) => {
                    return Self {
                        ip: *ip,
                        peer,
                        via: Via::TrustedProxy,
                    };
                }
                None => {
                    return Self {
                        ip: nearest_trusted,
                        peer,
                        via: Via::Unreadable,
                    };
                }
            }
        }
        match chain.last() {
            // Every hop is a trusted proxy (a health check from the balancer itself, an
            // internal caller): the nearest hop, which our peer vouches for, is the client;
            // anything further left may be the client's own writing.
            Some(Some(ip)) => Self {
                ip: *ip,
                peer,
                via: Via::TrustedProxy,
            },
            _ => direct(Via::Unreadable),
        }
    }

    /// The control API's "from this host" rule: a loopback client that is either direct, or
    /// named by a trusted proxy that is itself on this host (a remote proxy's loopback is not
    /// ours).
    pub fn is_local(&self) -> bool {
        let peer_local = self.peer.ip().to_canonical().is_loopback();
        match self.via {
            Via::Direct => peer_local,
            Via::TrustedProxy => peer_local && self.ip.is_loopback(),
            Via::UntrustedProxy | Via::Unreadable => false,
        }
    }
}

/// The hops a request went through, oldest first, from the configured header; `None` entries
/// are hops that name no address (`unknown`, obfuscated, garbage). `None` when the header is
/// absent.
fn forwarding_chain(headers: &HeaderMap, header: ProxyHeader) -> Option<Vec<Option<IpAddr>>> {
    let name = match header {
        ProxyHeader::XForwardedFor => "x-forwarded-for",
        ProxyHeader::Forwarded => "forwarded",
        ProxyHeader::XRealIp => "x-real-ip",
    };
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if values.is_empty() {
        return None;
    }
    let elements = values.iter().flat_map(|v| v.split(','));
    Some(match header {
        ProxyHeader::Forwarded => elements
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_hop(v))
            })
            .collect(),
        ProxyHeader::XForwardedFor | ProxyHeader::XRealIp => elements.map(parse_hop).collect(),
    })
}

/// One hop's address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`,
/// optionally quoted. Anything else (`unknown`, `_hidden`) names no address.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"').trim();
    if let Ok(ip) = IpAddr::from_str(text) {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = SocketAddr::from_str(text) {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = text.strip_prefix('[')?.split(']').next()?;
    IpAddr::from_str(bracketed).ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_refuses_garbage() {
        let t =
            TrustedProxies::parse(&["127.0.0.1/32", " 10.0.0.0/8", "", "::1", "fd00::/8"]).unwrap();
        assert!(t.contains(ip("127.0.0.1")));
        assert!(
            t.contains(ip("::ffff:127.0.0.1")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("fd12::5")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(!t.contains(ip("11.0.0.1")));
        let err = TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(TrustedProxies::parse(&["proxy.example"]).is_err());
        assert!(TrustedProxies::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let none = TrustedProxies::default();
        let direct = ClientAddr::resolve(peer("127.0.0.1"), &HeaderMap::new(), &none);
        assert_eq!((direct.ip, direct.via), (ip("127.0.0.1"), Via::Direct));
        assert!(direct.is_local());
        for name in FORWARDING_HEADERS {
            let c = ClientAddr::resolve(peer("127.0.0.1"), &headers(&[(name, "8.8.8.8")]), &none);
            assert_eq!(
                (c.ip, c.via),
                (ip("127.0.0.1"), Via::UntrustedProxy),
                "{name}"
            );
            assert!(!c.is_local(), "{name} disqualifies the loopback rule");
        }
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let t = TrustedProxies::parse(&["127.0.0.1/32", "10.0.0.0/8"]).unwrap();
        let resolve = |h: &[(&'static str, &str)]| {
            let c = ClientAddr::resolve(peer("127.0.0.1"), &headers(h), &t);
            (c.ip, c.via)
        };
        let client = (ip("203.0.113.9"), Via::TrustedProxy);
        assert_eq!(resolve(&[("x-forwarded-for", "203.0.113.9")]), client);
        // The client's own claims left of the first untrusted hop are ignored.
        assert_eq!(
            resolve(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.1.2.3")]),
            client
        );
        // Several header lines are one list.
        assert_eq!(
            resolve(&[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "203.0.113.9:5555")
            ]),
            client
        );
        // Only the configured header is read: a client-written Forwarded changes nothing.
        assert_eq!(
            resolve(&[
                ("forwarded", "for=127.0.0.1"),
                ("x-forwarded-for", "203.0.113.9")
            ]),
            client
        );
        let forwarded =
            TrustedProxies::with_header(&["127.0.0.1/32"], ProxyHeader::Forwarded).unwrap();
        let by_forwarded = |value: &str| {
            let c = ClientAddr::resolve(
                peer("127.0.0.1"),
                &headers(&[("forwarded", value), ("x-forwarded-for", "8.8.8.8")]),
                &forwarded,
            );
            (c.ip, c.via)
        };
        assert_eq!(
            by_forwarded(r#"for=1.1.1.1, for="203.0.113.9:4711";proto=https;by=10.0.0.1"#),
            client
        );
        assert_eq!(
            by_forwarded(r#"For="[2001:db8::7]:4711""#),
            (ip("2001:db8::7"), Via::TrustedProxy)
        );
        let real_ip = TrustedProxies::with_header(&["127.0.0.1/32"], ProxyHeader::XRealIp).unwrap();
        let c = ClientAddr::resolve(
            peer("127.0.0.1"),
            &headers(&[("x-real-ip", "203.0.113.9")]),
            &real_ip,
        );
        assert_eq!((c.ip, c.via), client);
        // A local client through a local proxy is local; a remote one is not.
        let local = ClientAddr::resolve(
            peer("127.0.0.1"),
            &headers(&[("x-forwarded-for", "127.0.0.1")]),
            &t,
        );
        assert!(local.is_local());
        let remote = ClientAddr::resolve(
            peer("127.0.0.1"),
            &headers(&[("x-forwarded-for", "8.8.8.8")]),
            &t,
        );
        assert!(!remote.is_local());
    }

    #[test]
    fn a_client_cannot_name_itself_local() {
        let t = TrustedProxies::parse(&["127.0.0.1/32", "10.0.0.0/8"]).unwrap();
        // Through the local proxy, which appends the real peer: the real peer is the client.
        let c = ClientAddr::resolve(
            peer("127.0.0.1"),
            &headers(&[("x-forwarded-for", "127.0.0.1, 203.0.113.9")]),
            &t,
        );
        assert_eq!(c.ip, ip("203.0.113.9"));
        assert!(!c.is_local());
        // Every hop trusted: the nearest hop, not the leftmost claim.
        let c = ClientAddr::resolve(
            peer("127.0.0.1"),
            &headers(&[("x-forwarded-for", "127.0.0.1, 10.1.2.3")]),
            &t,
        );
        assert_eq!((c.ip, c.via), (ip("10.1.2.3"), Via::TrustedProxy));
        assert!(!c.is_local());
        // A remote proxy's loopback is not ours.
        let c = ClientAddr::resolve(
            peer("10.1.2.3"),
            &headers(&[("x-forwarded-for", "127.0.0.1")]),
            &t,
        );
        assert!(c.ip.is_loopback());
        assert!(!c.is_local());
    }

    #[test]
    fn unreadable_chains_are_not_believed() {
        let t = TrustedProxies::parse(&["127.0.0.1/32", "10.0.0.0/8"]).unwrap();
        for h in [
            ("x-forwarded-for", "unknown"),
            ("x-forwarded-for", "203.0.113.9, garbage"),
            ("x-forwarded-for", ""),
            // Not the configured header.
            ("forwarded", "for=203.0.113.9"),
            ("x-client-ip", "203.0.113.9"),
        ] {
            let c = ClientAddr::resolve(peer("127.0.0.1"), &headers(&[h]), &t);
            assert_eq!(c.via, Via::Unreadable, "{h:?}");
            assert!(!c.is_local(), "{h:?}");
        }
        // A hop right of the garbage is still used when it is untrusted.
        let c = ClientAddr::resolve(
            peer("127.0.0.1"),
            &headers(&[("x-forwarded-for", "garbage, 203.0.113.9")]),
            &t,
        );
        assert_eq!((c.ip, c.via), (ip("203.0.113.9"), Via::TrustedProxy));
    }

    proptest! {
        /// Whatever the headers say, a peer that is not trusted is the client, and the
        /// resolver never panics.
        #[test]
        fn arbitrary_headers_never_panic(xff in ".{0,200}", fwd in ".{0,200}", trusted_peer: bool) {
            let t = TrustedProxies::parse(&["127.0.0.1/32"]).unwrap();
            let mut h = HeaderMap::new();
            if let Ok(v) = xff.parse() { h.insert("x-forwarded-for", v); }
            if let Ok(v) = fwd.parse() { h.insert("forwarded", v); }
            let p = if trusted_peer { peer("127.0.0.1") } else { peer("192.0.2.1") };
            let c = ClientAddr::resolve(p, &h, &t);
            if !trusted_peer {
                prop_assert_eq!(c.ip, ip("192.0.2.1"));
            }
        }
    }
}
