//! Addresses in the config: webhook URLs and allowed networks (Postgres URLs are parsed
//! by `pg::conninfo`, the one parser of connection strings).
//!
//! Only syntax is checked here; whether an address may be reached is decided at connect time
//! on the resolved address (SPEC §6), which a config check cannot do.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An IP network such as `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network address (host bits are zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(ip).into(), self.prefix, 32) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(ip), self.prefix, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` with everything after the first `prefix` of `width` bits cleared.
fn masked(bits: u128, prefix: u8, width: u32) -> u128 {
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        (bits >> host_bits) << host_bits
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{addr_text:?} is not an IP address"))?;
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => width,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= width => p,
                _ => return Err(format!("prefix length must be 0 to {width}")),
            },
        };
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::V4((masked(u32::from(v4).into(), prefix, 32) as u32).into()),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(masked(u128::from(v6), prefix, 128))),
        };
        if network != addr {
            // Usually a typo for the network itself; guessing silently could widen access.
            return Err(format!(
                "host bits are set; did you mean \"{network}/{prefix}\"?"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An entry of `delivery.allow_networks`: a network, or a host name allowed whatever it
/// resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowedNetwork {
    /// Addresses in this network may be private.
    Cidr(Cidr),
    /// This host (compared case-insensitively, stored in lower case) may be private.
    Host(String),
}

/// Parses an `allow_networks` entry: a CIDR, a bare IP address, or a host name.
pub(crate) fn parse_allowed_network(text: &str) -> Result<AllowedNetwork, String> {
    let looks_numeric = text.contains('/')
        || text.contains(':')
        || text.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        return text.parse().map(AllowedNetwork::Cidr);
    }
    if is_host_name(text) {
        Ok(AllowedNetwork::Host(text.to_ascii_lowercase()))
    } else {
        Err(
            "expected a CIDR such as \"10.0.0.0/8\" or a host name such as \"hooks.internal\""
                .into(),
        )
    }
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
pub(crate) fn is_host_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A URL with `{{ … }}` with every placeholder standing for `1`, to check what can be
/// checked before an event exists; `None` when the host itself is templated (then only the
/// scheme is known). `Err` when a `{{` is never closed.
pub fn url_template_example(url: &str) -> Result<Option<String>, String> {
    let mut example = String::with_capacity(url.len());
    let mut host_templated = false;
    let mut rest = url;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else {
            return Err("\"{{\" without a closing \"}}\"".into());
        };
        example.push_str(&rest[..open]);
        // Still inside (or before) scheme://host: the host is not known yet.
        host_templated |= match example.split_once("://") {
            None => true,
            Some((_, after)) => !after.contains(['/', '?', '#']),
        };
        example.push('1');
        rest = &rest[open + close + 2..];
    }
    example.push_str(rest);
    Ok((!host_templated).then_some(example))
}

/// Checks a URL with `{{ … }}` (rendered per event, SPEC §4a) as far as it can be checked
/// before an event exists: every `{{ … }}` stands for `1`, and the result must be a valid
/// webhook URL; when the host itself is templated only the scheme can be checked (the
/// rendered URL is checked again, by the network policy, when it is sent).
pub(crate) fn check_webhook_url_template(url: &str) -> Result<(), String> {
    match url_template_example(url)? {
        Some(example) => check_webhook_url(&example),
        None => {
            let lower = url.to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                Ok(())
            } else {
                Err("scheme must be http or https (write it out before any {{ … }})".into())
            }
        }
    }
}

/// Checks a subscriber URL: `http`/`https`, a host, an optional numeric port.
///
/// Hand-written rather than pulling in the `url` crate (and its IDNA tables) for a syntax
/// check; the HTTP client parses the URL again when it sends.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected an absolute URL such as \"https://example.com/hook\"".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("scheme must be http or https".into());
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (v6, after) = bracketed
            .split_once(']')
            .ok_or("unterminated IPv6 address: missing \"]\"")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("expected \":port\" after \"]\"")?,
            ),
        };
        (v6, port)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if !host_port.starts_with('[') && !is_host_name(host) {
        return Err(format!(
            "invalid host {host:?}; use letters, digits, '-' and '.' (xn-- form for international names)"
        ));
    }
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(format!("invalid port {port:?}; expected 1 to 65535"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "192.168.1.5".parse().unwrap();
        assert_eq!(one.to_string(), "192.168.1.5/32");
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!(
            "10.1.0.0/8".parse::<Cidr>(),
            Err("host bits are set; did you mean \"10.0.0.0/8\"?".into())
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err("prefix length must be 0 to 32".into())
        );
        assert_eq!(
            "10.0.0/8".parse::<Cidr>(),
            Err("\"10.0.0\" is not an IP address".into())
        );
    }

    #[test]
    fn url_templates_are_checked_with_every_placeholder_as_1() {
        for ok in [
            "https://api.example.com/orders/{{ key.id }}",
            "http://h.example/{{ object }}/{{ key.id }}?op={{ operation }}",
            "https://{{ values.tenant }}.example.com/hook",
            "https://{{ values.host }}/hook",
        ] {
            assert_eq!(check_webhook_url_template(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_webhook_url_template("ftp://h.example/{{ key.id }}"),
            Err("scheme must be http or https".into())
        );
        assert_eq!(
            check_webhook_url_template("{{ values.url }}"),
            Err("scheme must be http or https (write it out before any {{ … }})".into())
        );
        assert_eq!(
            check_webhook_url_template("https://h.example/{{ key.id"),
            Err("\"{{\" without a closing \"}}\"".into())
        );
        assert!(check_webhook_url_template("https:///{{ key.id }}").is_err());
    }

    #[test]
    fn allowed_networks_take_hosts_too() {
        assert_eq!(
            parse_allowed_network("Hooks.Internal"),
            Ok(AllowedNetwork::Host("hooks.internal".into()))
        );
        assert!(matches!(
            parse_allowed_network("::1"),
            Ok(AllowedNetwork::Cidr(_))
        ));
        assert!(parse_allowed_network("bad host!").is_err());
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(
            check_webhook_url("https://partner.example.com/hooks/invoice"),
            Ok(())
        );
        assert_eq!(check_webhook_url("http://127.0.0.1:8080/x?y=1#z"), Ok(()));
        assert_eq!(check_webhook_url("http://[::1]:9000/"), Ok(()));
        assert_eq!(check_webhook_url("HTTPS://user:pw@host"), Ok(()));
        assert_eq!(
            check_webhook_url("htp://x"),
            Err("scheme must be http or https".into())
        );
        assert_eq!(
            check_webhook_url("http:///path"),
            Err("missing host".into())
        );
        assert_eq!(
            check_webhook_url("http://h:99999/"),
            Err("invalid port \"99999\"; expected 1 to 65535".into())
        );
        assert!(check_webhook_url("example.com/hook").is_err());
        assert!(check_webhook_url("http://exa mple.com").is_err());
        assert!(check_webhook_url("http://[::zz]/").is_err());
        assert!(check_webhook_url("http://bad_host/").is_err());
    }
}
