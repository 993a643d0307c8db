//! Which addresses a webhook may reach (SPEC §6), and the one HTTP client that enforces it.
//!
//! The check runs on the address actually connected to: [`PolicyResolver`] is the client's DNS
//! resolver, so a name cannot pass a check with one answer and connect with another (DNS
//! rebinding). The HTTP client never calls a resolver for a URL whose host is a literal IP
//! address, so the sender must also call [`check_url`] before every request.
//!
//! Rules, in order:
//! - link-local and cloud-metadata addresses are always refused;
//! - private, loopback, CGNAT, unspecified, broadcast, multicast and reserved addresses are
//!   refused unless `delivery.allow_networks` lists a network containing the address or the
//!   URL's host name;
//! - everything else (public addresses) is allowed.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
//! `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and its local-use
//! `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) are judged as that IPv4 address (both
//! Teredo's server and client), since that is what they reach.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::{AllowedNetwork, Cidr};

/// How long establishing a connection (resolution included) may take (SPEC §4).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Cloud instance-metadata services. Most lie inside ranges that `allow_networks` may open
/// (link-local, CGNAT, private), so they are matched before those ranges and never allowed.
const METADATA_V4: &[Ipv4Addr] = &[
    // AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack, …
    Ipv4Addr::new(169, 254, 169, 254),
    // AWS ECS task metadata and credentials.
    Ipv4Addr::new(169, 254, 170, 2),
    // Alibaba Cloud.
    Ipv4Addr::new(100, 100, 100, 200),
    // Azure WireServer: a public-range address that answers only from inside Azure.
    Ipv4Addr::new(168, 63, 129, 16),
    // Oracle Cloud Classic.
    Ipv4Addr::new(192, 0, 0, 192),
];

/// IPv6 metadata endpoints (both inside fc00::/7, which `allow_networks` may open).
const METADATA_V6: &[Ipv6Addr] = &[
    // AWS IMDS over IPv6.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    // GCP metadata server over IPv6.
    Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254),
];

/// Why an address is not an ordinary public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A cloud instance-metadata service; always refused.
    CloudMetadata,
    /// 169.254.0.0/16 or fe80::/10; always refused.
    LinkLocal,
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 (and the deprecated fec0::/10).
    Private,
    /// The shared address space 100.64.0.0/10 (carrier-grade NAT).
    Cgnat,
    /// 0.0.0.0 or `::`; connecting there reaches the local host.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 0.0.0.0/8 ("this network"), 240.0.0.0/4 and the special-purpose 198.18.0.0/15 and
    /// 192.0.0.0/24: never an ordinary destination.
    Reserved,
}

impl Rule {
    /// Whether `allow_networks` cannot lift this refusal.
    pub fn always_refused(self) -> bool {
        matches!(self, Rule::CloudMetadata | Rule::LinkLocal)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::CloudMetadata => "a cloud metadata address",
            Rule::LinkLocal => "link-local",
            Rule::Loopback => "loopback",
            Rule::Private => "private",
            Rule::Cgnat => "in the CGNAT range 100.64.0.0/10",
            Rule::Unspecified => "unspecified",
            Rule::Broadcast => "broadcast",
            Rule::Multicast => "multicast",
            Rule::Reserved => "reserved",
        })
    }
}

/// Why a webhook URL or address may not be used. Messages name the host and address but never
/// the rest of the URL, whose path or query may hold a token.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The URL does not parse.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The scheme is not `http` or `https`.
    #[error("scheme {0:?} is not allowed; webhook URLs use http or https")]
    Scheme(String),
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The address falls under `rule`; `also_refused` more addresses of the same host were
    /// refused too (when a resolved name had nothing left).
    #[error("{}", refusal_message(host, *ip, *rule, *also_refused))]
    Refused {
        /// The URL's host as written (a name or an IP literal).
        host: String,
        /// The address refused.
        ip: IpAddr,
        /// Why.
        rule: Rule,
        /// How many other addresses of `host` were refused.
        also_refused: usize,
    },
    /// Resolving the host failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The host resolved to no address at all.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
}

fn refusal_message(host: &str, ip: IpAddr, rule: Rule, also_refused: usize) -> String {
    // A literal-IP host would only repeat the address.
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|h| h == ip);
    let mut message = if literal {
        format!("{ip} is {rule}")
    } else {
        format!("{host} resolves to {ip}, which is {rule}")
    };
    match (rule.always_refused(), literal) {
        (true, _) => message.push_str(", always refused"),
        (false, true) => message.push_str("; add it to delivery.allow_networks to allow it"),
        (false, false) => message.push_str(&format!(
            "; add {host} or the address to delivery.allow_networks to allow it"
        )),
    }
    if also_refused > 0 {
        message.push_str(&format!(" ({also_refused} more address(es) refused too)"));
    }
    message
}

/// The rule `ip` falls under, or `None` for an ordinary public address.
pub fn classify(ip: IpAddr) -> Option<Rule> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            let embedded = embedded_v4(v6);
            if embedded.is_empty() {
                classify_v6(v6)
            } else {
                // A tunnel reaches (or passes through) each embedded address: one refused
                // address refuses the whole.
                embedded.into_iter().find_map(classify_v4)
            }
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Rule> {
    // Before the ranges: several metadata addresses sit inside ranges that may be allowed.
    if METADATA_V4.contains(&ip) {
        return Some(Rule::CloudMetadata);
    }
    Some(match ip.octets() {
        [169, 254, ..] => Rule::LinkLocal,
        [127, ..] => Rule::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => Rule::Private,
        [100, 64..=127, ..] => Rule::Cgnat,
        [0, 0, 0, 0] => Rule::Unspecified,
        [0, ..] => Rule::Reserved,
        // Benchmarking 198.18.0.0/15 and IETF protocol assignments 192.0.0.0/24: special
        // purpose (RFC 6890), never an ordinary receiver.
        [198, 18..=19, ..] | [192, 0, 0, _] => Rule::Reserved,
        [255, 255, 255, 255] => Rule::Broadcast,
        [224..=239, ..] => Rule::Multicast,
        [240..=255, ..] => Rule::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Rule> {
    if METADATA_V6.contains(&ip) {
        return Some(Rule::CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(Rule::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Rule::Loopback);
    }
    let first = ip.segments()[0];
    Some(if first & 0xffc0 == 0xfe80 {
        Rule::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        // Unique local, and the deprecated site-local range some stacks still route.
        Rule::Private
    } else if first & 0xff00 == 0xff00 {
        Rule::Multicast
    } else {
        return None;
    })
}

fn v4_of(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// The IPv4 addresses an IPv6 address stands for or tunnels through, if it is one of the
/// forms that reach one; empty for a native IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return vec![v4];
    }
    let s = ip.segments();
    let tail = v4_of(s[6], s[7]);
    // IPv4-compatible (deprecated) `::a.b.c.d`; `::` and `::1` are IPv6's own and judged so.
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return vec![tail];
    }
    // IPv4-translated (SIIT) `::ffff:0:a.b.c.d`.
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return vec![tail];
    }
    // NAT64: the well-known prefix 64:ff9b::/96 and the local-use 64:ff9b:1::/48; a translator
    // forwards to the embedded address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return vec![tail];
    }
    // 6to4 2002::/16: the relay is the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return vec![v4_of(s[1], s[2])];
    }
    // Teredo 2001::/32: the client is the inverted last 32 bits, the server bits 32..64.
    if s[..2] == [0x2001, 0] {
        return vec![v4_of(!s[6], !s[7]), v4_of(s[2], s[3])];
    }
    Vec::new()
}

/// `delivery.allow_networks`, ready to judge addresses.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    networks: Vec<Cidr>,
    /// Lower case, without a trailing dot.
    hosts: Vec<String>,
}

impl NetworkPolicy {
    /// A policy allowing, besides public addresses, the listed networks and host names.
    pub fn new(allow: &[AllowedNetwork]) -> Self {
        let mut policy = NetworkPolicy::default();
        for entry in allow {
            match entry {
                AllowedNetwork::Cidr(cidr) => policy.networks.push(*cidr),
                AllowedNetwork::Host(host) => policy.hosts.push(normalize_host(host)),
            }
        }
        policy
    }

    /// Whether `host` (the URL's host) may connect to `ip`; the error names the rule.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), PolicyError> {
        let Some(rule) = classify(ip) else {
            return Ok(());
        };
        if !rule.always_refused() && self.allows(host, ip) {
            return Ok(());
        }
        Err(PolicyError::Refused {
            host: host.to_owned(),
            ip,
            rule,
            also_refused: 0,
        })
    }

    fn allows(&self, host: &str, ip: IpAddr) -> bool {
        let host = normalize_host(host);
        if self.hosts.contains(&host) {
            return true;
        }
        if self.networks.iter().any(|net| net.contains(ip)) {
            return true;
        }
        // `127.0.0.0/8` also covers `::ffff:127.0.0.1`: both reach the same place. A tunnel
        // form is allowed when every refused address it carries is.
        let IpAddr::V6(v6) = ip else { return false };
        let embedded = embedded_v4(v6);
        !embedded.is_empty()
            && embedded
                .into_iter()
                .filter(|v4| classify_v4(*v4).is_some())
                .all(|v4| self.networks.iter().any(|net| net.contains(IpAddr::V4(v4))))
    }
}

fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Checks a webhook URL before a request: the scheme, and the address when the host is a
/// literal IP (the client resolves no such host, so [`PolicyResolver`] never sees it).
pub fn check_url(url: &str, policy: &NetworkPolicy) -> Result<(), PolicyError> {
    // The client's own parser, so the host checked is the host connected to (it also turns
    // forms such as `http://2130706433/` into the address they mean).
    let parsed = reqwest::Url::parse(url).map_err(|e| PolicyError::InvalidUrl(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(PolicyError::Scheme(other.to_owned())),
    }
    let host = match parsed.host_str() {
        None | Some("") => return Err(PolicyError::NoHost),
        Some(host) => host,
    };
    // The parser has already turned every numeric form into a canonical address (IPv6 in
    // brackets), so a host that parses as an address is one.
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => policy.check_ip(host, ip),
        Err(_) => Ok(()),
    }
}

/// The client's DNS resolver: resolves with the system resolver and keeps only the addresses
/// the policy allows, so the check and the connection use the same answer.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<NetworkPolicy>,
}

impl PolicyResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: NetworkPolicy) -> Self {
        PolicyResolver {
            policy: Arc::new(policy),
        }
    }

    /// The allowed addresses of `host` (port 0), or why there are none.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<SocketAddr>, PolicyError> {
        let resolved =
            tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| PolicyError::Resolve {
                    host: host.to_owned(),
                    source,
                })?;
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        for addr in resolved {
            match self.policy.check_ip(host, addr.ip()) {
                Ok(()) => kept.push(addr),
                Err(error) => refused.push(error),
            }
        }
        if !kept.is_empty() {
            for error in &refused {
                // A name mixing public and private answers still works; say what was skipped.
                tracing::debug!(%error, "skipping a refused address");
            }
            return Ok(kept);
        }
        let also = refused.len().saturating_sub(1);
        match refused.into_iter().next() {
            Some(PolicyError::Refused { host, ip, rule, .. }) => Err(PolicyError::Refused {
                host,
                ip,
                rule,
                also_refused: also,
            }),
            Some(other) => Err(other),
            None => Err(PolicyError::NoAddress {
                host: host.to_owned(),
            }),
        }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.resolve_host(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The one HTTP client of the process: redirects off, proxies from the environment ignored
/// (`no_proxy()`), connect timeout 5 s, the policy resolver.
///
/// Pooled connections were checked under the policy they were opened with: build a new client
/// when `allow_networks` changes (the dispatcher does, on reload).
pub fn http_client(policy: NetworkPolicy) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // A 3xx is a failure naming the new location (SPEC §4); following it would also
        // reach a URL nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        // HTTP_PROXY and friends would send requests where the resolver's check means nothing.
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .dns_resolver(Arc::new(PolicyResolver::new(policy)))
        .build()
}

/// The [`PolicyError`] behind a client error, if a policy refusal caused it.
pub fn policy_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a PolicyError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<PolicyError>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidr(text: &str) -> AllowedNetwork {
        AllowedNetwork::Cidr(text.parse().unwrap())
    }

    fn host(name: &str) -> AllowedNetwork {
        AllowedNetwork::Host(name.into())
    }

    fn rule_of(result: Result<(), PolicyError>) -> Option<Rule> {
        match result {
            Ok(()) => None,
            Err(PolicyError::Refused { rule, .. }) => Some(rule),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn loopback_is_refused_unless_allowed() {
        let default = NetworkPolicy::new(&[]);
        let error = default.check_ip("127.0.0.1", ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "127.0.0.1 is loopback; add it to delivery.allow_networks to allow it"
        );
        let error = default.check_ip("localhost", ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "localhost resolves to 127.0.0.1, which is loopback; \
             add localhost or the address to delivery.allow_networks to allow it"
        );

        let by_network = NetworkPolicy::new(&[cidr("127.0.0.0/8")]);
        assert!(by_network.check_ip("127.0.0.1", ip("127.0.0.1")).is_ok());
        assert!(by_network.check_ip("anything", ip("127.9.9.9")).is_ok());
        assert!(by_network.check_ip("::1", ip("::1")).is_err());

        let by_host = NetworkPolicy::new(&[host("localhost")]);
        assert!(by_host.check_ip("localhost", ip("127.0.0.1")).is_ok());
        assert!(by_host.check_ip("LocalHost.", ip("::1")).is_ok());
        assert!(by_host.check_ip("other.internal", ip("127.0.0.1")).is_err());
        assert!(by_host.check_ip("127.0.0.1", ip("127.0.0.1")).is_err());
    }

    #[test]
    fn link_local_and_metadata_are_always_refused() {
        let open = NetworkPolicy::new(&[
            cidr("169.254.0.0/16"),
            cidr("100.64.0.0/10"),
            cidr("fc00::/7"),
            cidr("fe80::/10"),
            cidr("0.0.0.0/0"),
            cidr("::/0"),
            host("metadata.google.internal"),
        ]);
        let error = open
            .check_ip("169.254.169.254", ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "169.254.169.254 is a cloud metadata address, always refused"
        );
        let error = open
            .check_ip("metadata.google.internal", ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "metadata.google.internal resolves to 169.254.169.254, which is a cloud metadata \
             address, always refused"
        );
        for (addr, rule) in [
            ("fd00:ec2::254", Rule::CloudMetadata),
            ("100.100.100.200", Rule::CloudMetadata),
            ("169.254.170.2", Rule::CloudMetadata),
            ("169.254.1.1", Rule::LinkLocal),
            ("fe80::1", Rule::LinkLocal),
        ] {
            assert_eq!(rule_of(open.check_ip(addr, ip(addr))), Some(rule), "{addr}");
        }
        // The ranges around them stay open.
        assert!(open.check_ip("x", ip("100.64.0.1")).is_ok());
        assert!(open.check_ip("x", ip("fd00:ec2::253")).is_ok());
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_as_ipv4() {
        let default = NetworkPolicy::new(&[]);
        for (addr, rule) in [
            ("::ffff:127.0.0.1", Rule::Loopback),
            ("::ffff:10.0.0.1", Rule::Private),
            ("::ffff:169.254.169.254", Rule::CloudMetadata),
            ("::ffff:0.0.0.0", Rule::Unspecified),
            ("::127.0.0.1", Rule::Loopback),
            ("64:ff9b::a9fe:a9fe", Rule::CloudMetadata),
            // NAT64 local use: the last 32 bits.
            ("64:ff9b:1::7f00:1", Rule::Loopback),
            ("64:ff9b:1:abcd::a00:1", Rule::Private),
            // IPv4-translated.
            ("::ffff:0:7f00:1", Rule::Loopback),
            ("::ffff:0:a9fe:a9fe", Rule::CloudMetadata),
            // 6to4: bits 16..48.
            ("2002:7f00:1::1", Rule::Loopback),
            ("2002:a9fe:a9fe::", Rule::CloudMetadata),
            ("2002:c0a8:101:1::5", Rule::Private),
            // Teredo: server 127.0.0.1 (bits 32..64), public client 93.184.215.14.
            ("2001:0:7f00:1::a247:28f1", Rule::Loopback),
            // Teredo: public server 93.184.215.14, client 10.0.0.1 (inverted last 32 bits).
            ("2001:0:5db8:d70e::f5ff:fffe", Rule::Private),
        ] {
            assert_eq!(
                rule_of(default.check_ip(addr, ip(addr))),
                Some(rule),
                "{addr}"
            );
        }
        for addr in [
            "::ffff:93.184.215.14",
            "::ffff:0:5db8:d70e",
            "64:ff9b:1::5db8:d70e",
            "2002:5db8:d70e::1",
            "2001:0:5db8:d70e::a247:28f1",
        ] {
            assert!(default.check_ip("x", ip(addr)).is_ok(), "{addr}");
        }
        // Allowing the IPv4 network allows its mapped form too.
        let allowed = NetworkPolicy::new(&[cidr("127.0.0.0/8")]);
        assert!(allowed.check_ip("x", ip("::ffff:127.0.0.1")).is_ok());
    }

    #[test]
    fn special_ranges_are_refused_by_default_and_public_ones_pass() {
        let default = NetworkPolicy::new(&[]);
        for (addr, rule) in [
            ("10.1.2.3", Rule::Private),
            ("172.16.0.1", Rule::Private),
            ("172.31.255.255", Rule::Private),
            ("192.168.1.1", Rule::Private),
            ("fd00::1", Rule::Private),
            ("fc00::1", Rule::Private),
            ("100.64.0.1", Rule::Cgnat),
            ("100.127.255.254", Rule::Cgnat),
            ("::1", Rule::Loopback),
            ("127.255.0.1", Rule::Loopback),
            ("0.0.0.0", Rule::Unspecified),
            ("::", Rule::Unspecified),
            ("0.1.2.3", Rule::Reserved),
            ("240.0.0.1", Rule::Reserved),
            ("198.18.0.1", Rule::Reserved),
            ("198.19.255.254", Rule::Reserved),
            ("192.0.0.8", Rule::Reserved),
            ("255.255.255.255", Rule::Broadcast),
            ("224.0.0.1", Rule::Multicast),
            ("ff02::1", Rule::Multicast),
        ] {
            assert_eq!(
                rule_of(default.check_ip(addr, ip(addr))),
                Some(rule),
                "{addr}"
            );
        }
        assert_eq!(
            default
                .check_ip("100.64.0.1", ip("100.64.0.1"))
                .unwrap_err()
                .to_string(),
            "100.64.0.1 is in the CGNAT range 100.64.0.0/10; \
             add it to delivery.allow_networks to allow it"
        );
        // Classification only: nothing connects to these.
        for addr in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "192.0.1.1",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
        ] {
            assert!(default.check_ip(addr, ip(addr)).is_ok(), "{addr}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_addresses() {
        let default = NetworkPolicy::new(&[]);
        assert!(matches!(
            check_url("ftp://files.example.com/x", &default),
            Err(PolicyError::Scheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            check_url("file:///etc/passwd", &default),
            Err(PolicyError::Scheme(_))
        ));
        assert!(matches!(
            check_url("hooks.example.com/x", &default),
            Err(PolicyError::InvalidUrl(_))
        ));
        // Names are judged when resolved, at connect time.
        assert!(check_url("https://hooks.example.com/x", &default).is_ok());
        assert!(check_url("http://localhost:8080/", &default).is_ok());
        assert!(check_url("http://93.184.215.14/hook", &default).is_ok());

        let error = check_url("http://10.0.0.1/hooks/s3cr3t-token?k=v", &default).unwrap_err();
        assert_eq!(
            error.to_string(),
            "10.0.0.1 is private; add it to delivery.allow_networks to allow it"
        );
        assert_eq!(
            check_url("http://[::1]:9000/", &default)
                .unwrap_err()
                .to_string(),
            "::1 is loopback; add it to delivery.allow_networks to allow it"
        );
        // Other spellings of 127.0.0.1 that the client would connect to.
        for url in [
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(
                matches!(
                    check_url(url, &default),
                    Err(PolicyError::Refused {
                        rule: Rule::Loopback,
                        ..
                    })
                ),
                "{url}"
            );
        }
        let allowed = NetworkPolicy::new(&[cidr("127.0.0.0/8")]);
        assert!(check_url("http://127.0.0.1:8080/", &allowed).is_ok());
        assert!(check_url("http://169.254.169.254/latest/", &allowed).is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let default = PolicyResolver::new(NetworkPolicy::new(&[]));
        let error = default.resolve_host("localhost").await.unwrap_err();
        assert!(
            matches!(&error, PolicyError::Refused { host, rule: Rule::Loopback, .. } if host == "localhost"),
            "{error}"
        );

        // localhost may also resolve to ::1, which 127.0.0.0/8 does not cover: it is dropped.
        let allowed = PolicyResolver::new(NetworkPolicy::new(&[cidr("127.0.0.0/8")]));
        let addrs = allowed.resolve_host("localhost").await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1: `/start` answers 302 to `/landing`, anything
    /// else 200. Returns its address and a count of the requests it received.
    async fn serve() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or("/");
                    let response = if path == "/start" {
                        format!(
                            "HTTP/1.1 302 Found\r\nLocation: http://{addr}/landing\r\n\
                             Content-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                    } else {
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                            .to_owned()
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (addr, requests)
    }

    #[tokio::test]
    async fn the_client_refuses_a_name_resolving_to_loopback_unless_allowed() {
        let (addr, requests) = serve().await;
        let url = format!("http://localhost:{}/hook", addr.port());

        let client = http_client(NetworkPolicy::new(&[])).unwrap();
        let error = client.get(&url).send().await.unwrap_err();
        let refusal = policy_error(&error).unwrap_or_else(|| panic!("not a refusal: {error:?}"));
        assert!(matches!(
            refusal,
            PolicyError::Refused {
                rule: Rule::Loopback,
                ..
            }
        ));
        let message = refusal.to_string();
        assert!(
            message.starts_with("localhost resolves to ")
                && message.contains(
                    "which is loopback; add localhost or the address to delivery.allow_networks"
                ),
            "{message}"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 0);

        for allow in [host("localhost"), cidr("127.0.0.0/8")] {
            let client = http_client(NetworkPolicy::new(&[allow])).unwrap();
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.text().await.unwrap(), "ok");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_client_does_not_follow_redirects() {
        let (addr, requests) = serve().await;
        let policy = NetworkPolicy::new(&[cidr("127.0.0.0/8")]);
        let url = format!("http://{addr}/start");
        check_url(&url, &policy).unwrap();
        let response = http_client(policy).unwrap().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    /// Set by [`env_proxies_are_ignored`] for the child process it starts.
    const PROXY_CHILD: &str = "WALHOOK_TEST_PROXY_CHILD";

    /// Runs [`env_proxy_child`] in a child process whose environment points every proxy
    /// variable at a closed loopback port: the environment of this process, shared by the
    /// tests running in parallel, is never changed.
    #[test]
    fn env_proxies_are_ignored() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "delivery::network::tests::env_proxy_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROXY_CHILD, "1");
        for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
            child.env(name, &proxy);
        }
        for name in ["NO_PROXY", "no_proxy"] {
            child.env_remove(name);
        }
        let output = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The half of [`env_proxies_are_ignored`] that runs in the child process.
    #[tokio::test]
    #[ignore = "run by env_proxies_are_ignored in a child process"]
    async fn env_proxy_child() {
        if std::env::var_os(PROXY_CHILD).is_none() {
            return;
        }
        assert!(std::env::var_os("HTTP_PROXY").is_some());
        let (addr, requests) = serve().await;
        let client = http_client(NetworkPolicy::new(&[cidr("127.0.0.0/8")])).unwrap();
        let response = client
            .get(format!("http://localhost:{}/", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }
}
