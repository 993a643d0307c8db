//! Who may talk to the listener at all, before any token (DNS rebinding, cross-site writes).
//!
//! A web page whose name rebinds to 127.0.0.1 reaches the listener with its own name in
//! `Host`, so only IP literals and `localhost` (with or without a port) are served; `http.listen`
//! is an IP address, so that covers the configured name too. A browser also lets any page send
//! a POST it cannot read the answer of: a write call marked cross-site or same-site by
//! `Sec-Fetch-Site`, or with an `Origin` other than the `Host` it was sent to, is refused
//! whatever credentials it carries. Clients that are not browsers send neither header.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Serves the request only when its `Host` is ours and, for a write call, it is not
/// cross-site.
pub(super) async fn guard(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host {
        if !host_is_ours(host) {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {host:?} is not this server's: walhook answers only to an IP address \
                     or localhost (a name pointing at it could be a DNS rebinding page); use \
                     http://<ip>:<port>/"
                ),
            );
        }
    }
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if write {
        if let Some(why) = cross_site(headers, host.as_deref()) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("write calls from a web page are refused: {why}"),
            );
        }
    }
    next.run(request).await
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Whether `host` (a `Host` value: name or address, optional port) is an IP literal or
/// `localhost`.
fn host_is_ours(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || valid_port(port) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

fn valid_port(port: &str) -> bool {
    port.strip_prefix(':')
        .unwrap_or(port)
        .parse::<u16>()
        .is_ok()
}

/// Why a write call comes from another site, if it does.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if matches!(site, "cross-site" | "same-site") {
            return Some(format!("Sec-Fetch-Site is {site}"));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => None,
        _ => Some(format!(
            "Origin {origin:?} does not match Host {:?}",
            host.unwrap_or("")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_and_localhost_are_our_hosts() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "[::1]",
            "[::1]:9090",
            "localhost",
            "LocalHost:9090",
            "localhost.:1",
            "10.1.2.3:80",
        ] {
            assert!(host_is_ours(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "[::1]x",
            "127.0.0.1:port",
            "",
        ] {
            assert!(!host_is_ours(host), "{host}");
        }
    }
}
