//! Connection strings: libpq-style `postgres://` URLs and `key=value` lists, resolved into the
//! values walhook connects with.
//!
//! `tokio_postgres::Config` does most of the parsing, but it rejects the libpq keys it does not
//! know (`sslrootcert`, `sslcert`, `sslkey`) and the `sslmode` values it lacks (`verify-ca`,
//! `verify-full`). Those are taken out of the string first and the rest is handed over. The
//! password only ever lives inside the `Config`; nothing here prints it.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, Host as PgHost, SslNegotiation};

/// The port Postgres listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5432;

/// The `application_name` walhook reports when the connection string sets none.
pub const DEFAULT_APPLICATION_NAME: &str = "walhook";

/// How hard to insist on TLS and how much of the server certificate to check (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without checking its certificate.
    Prefer,
    /// Insist on TLS; check the certificate chain only when `sslrootcert` is given.
    Require,
    /// Insist on TLS and check that a trusted CA signed the server certificate.
    VerifyCa,
    /// As `VerifyCa`, and check that the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The spelling libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, ConnInfoError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(ConnInfoError::new(
                    "sslmode=allow is not supported; use sslmode=prefer or sslmode=disable",
                ))
            }
            other => {
                return Err(ConnInfoError::new(format!(
                    "invalid sslmode {other:?}; use one of disable, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted CA certificates come from (libpq's `sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// A host to connect to: a TCP host name or address, or a directory holding a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// One place to try: host, optional literal address (libpq's `hostaddr`), and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host, also the name checked against the certificate under `verify-full`.
    pub host: Host,
    /// Connect to this address instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    /// The TCP port, or the number in the Unix socket's file name.
    pub port: u16,
}

impl Target {
    /// Whether this target is a Unix socket (never TLS, as in libpq).
    pub fn is_unix(&self) -> bool {
        matches!(self.host, Host::Unix(_))
    }

    /// Path of the Unix socket, for Unix targets.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Unix(_) => {
                let path = self.socket_path().unwrap_or_default();
                write!(f, "{}", path.display())
            }
            Host::Tcp(name) => {
                if name.contains(':') {
                    write!(f, "[{name}]")?;
                } else {
                    f.write_str(name)?;
                }
                if let Some(addr) = self.hostaddr {
                    if addr.to_string() != *name {
                        write!(f, " ({addr})")?;
                    }
                }
                write!(f, ":{}", self.port)
            }
        }
    }
}

/// A connection string that cannot be used. The message never quotes the password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid connection string: {message}")]
pub struct ConnInfoError {
    message: String,
}

impl ConnInfoError {
    fn new(message: impl Into<String>) -> Self {
        ConnInfoError {
            message: message.into(),
        }
    }

    /// What is wrong, without the "invalid connection string" in front (the config shows it
    /// after the redacted URL instead).
    pub fn reason(&self) -> &str {
        &self.message
    }
}

/// A parsed connection string with every default resolved.
///
/// `Display`, `Debug` and [`ConnInfo::redacted`] show everything but the password.
#[derive(Clone)]
pub struct ConnInfo {
    targets: Vec<Target>,
    user: String,
    dbname: String,
    sslmode: SslMode,
    sslrootcert: Option<RootCert>,
    client_cert: Option<(PathBuf, PathBuf)>,
    config: tokio_postgres::Config,
}

impl ConnInfo {
    /// Parses a `postgres://` URL or a `key=value` connection string.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let mut extra = Extra::default();
        let remaining = if is_url(s) {
            extract_from_url(s, &mut extra)?
        } else {
            extract_from_key_value(s, &mut extra)?
        };
        let config = tokio_postgres::Config::from_str(&remaining).map_err(|e| {
            // tokio-postgres names the key, never the value, so this cannot leak a password.
            // Its own text is only "invalid connection string"; the cause is the reason.
            ConnInfoError::new(
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string),
            )
        })?;
        Self::resolve(config, extra)
    }

    /// Parses a connection string given as a URL, the only form walhook's config takes, and
    /// refuses what libpq would read differently (so psql and `pg_recvlogical` connect where
    /// walhook does): another scheme, or URL delimiters left unencoded in the user name or
    /// password.
    pub fn parse_url(url: &str) -> Result<ConnInfo, ConnInfoError> {
        if !is_url(url) {
            return Err(ConnInfoError::new(
                "must start with postgres:// or postgresql://",
            ));
        }
        check_userinfo(url)?;
        ConnInfo::parse(url)
    }

    fn resolve(mut config: tokio_postgres::Config, extra: Extra) -> Result<Self, ConnInfoError> {
        if config.get_ssl_negotiation() == SslNegotiation::Direct {
            return Err(ConnInfoError::new(
                "sslnegotiation=direct is not supported; leave it at the default (postgres)",
            ));
        }
        let sslrootcert = match extra.sslrootcert.as_deref() {
            None | Some("") => None,
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
        };
        let sslmode = match (extra.sslmode, &sslrootcert) {
            (Some(mode), _) => mode,
            // libpq ≥ 16: the system store only makes sense when the host name is checked.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if sslrootcert == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
            return Err(ConnInfoError::new(format!(
                "sslrootcert=system needs sslmode=verify-full, not sslmode={sslmode}: any \
                 certificate from a public CA would pass otherwise"
            )));
        }
        let client_cert = match (extra.sslcert, extra.sslkey) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (Some(_), None) => {
                return Err(ConnInfoError::new(
                    "sslcert is set but sslkey is not: give both (the client certificate and \
                     its private key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConnInfoError::new(
                    "sslkey is set but sslcert is not: give both (the client certificate and \
                     its private key)",
                ))
            }
        };
        if client_cert.is_some() && sslmode == SslMode::Disable {
            return Err(ConnInfoError::new(
                "sslcert/sslkey are set but sslmode=disable turns TLS off",
            ));
        }

        let user = match config.get_user().filter(|u| !u.is_empty()) {
            Some(user) => user.to_owned(),
            None => default_user()?,
        };
        let dbname = config
            .get_dbname()
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_owned();
        let targets = resolve_targets(&config)?;

        config.user(&user);
        config.dbname(&dbname);
        if config.get_application_name().is_none() {
            config.application_name(DEFAULT_APPLICATION_NAME);
        }
        Ok(ConnInfo {
            targets,
            user,
            dbname,
            sslmode,
            sslrootcert,
            client_cert,
            config,
        })
    }

    /// The places to try, in order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The role to log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database to connect to (defaults to the user name, as in libpq).
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The password, if the connection string has one. Never log it.
    pub fn password(&self) -> Option<&[u8]> {
        self.config.get_password()
    }

    /// The `application_name` to report (`walhook` unless the string sets one).
    pub fn application_name(&self) -> &str {
        self.config
            .get_application_name()
            .unwrap_or(DEFAULT_APPLICATION_NAME)
    }

    /// Server command-line options (libpq's `options`), e.g. `-c statement_timeout=0`.
    pub fn options(&self) -> Option<&str> {
        self.config.get_options()
    }

    /// The TLS mode.
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// Where trusted CA certificates come from, if set.
    pub fn sslrootcert(&self) -> Option<&RootCert> {
        self.sslrootcert.as_ref()
    }

    /// Client certificate and key files (libpq's `sslcert`, `sslkey`), if set.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// The time allowed for each connection attempt, if limited.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.config.get_connect_timeout().copied()
    }

    /// Whether SCRAM channel binding is disabled, preferred or required.
    pub fn channel_binding(&self) -> ChannelBinding {
        self.config.get_channel_binding()
    }

    /// Whether TCP keepalives are on (libpq's `keepalives`, default on).
    pub fn keepalives(&self) -> bool {
        self.config.get_keepalives()
    }

    /// The underlying tokio-postgres configuration (user, database and defaults filled in).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The connection string without its password, for logs and error messages.
    pub fn redacted(&self) -> String {
        self.to_string()
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse(s)
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .targets
            .iter()
            .map(|t| match &t.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(d) => d.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.targets.iter().map(|t| t.port.to_string()).collect();
        write!(
            f,
            "host={} port={} user={} dbname={}",
            quote(&hosts.join(",")),
            ports.join(","),
            quote(&self.user),
            quote(&self.dbname)
        )?;
        if self.password().is_some() {
            f.write_str(" password=***")?;
        }
        write!(f, " sslmode={}", self.sslmode)?;
        match &self.sslrootcert {
            Some(RootCert::File(p)) => {
                write!(f, " sslrootcert={}", quote(&p.display().to_string()))?
            }
            Some(RootCert::System) => f.write_str(" sslrootcert=system")?,
            None => {}
        }
        if let Some((cert, key)) = &self.client_cert {
            write!(
                f,
                " sslcert={} sslkey={}",
                quote(&cert.display().to_string()),
                quote(&key.display().to_string())
            )?;
        }
        write!(f, " application_name={}", quote(self.application_name()))
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

/// The values pulled out before tokio-postgres sees the string.
#[derive(Default)]
struct Extra {
    sslmode: Option<SslMode>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl Extra {
    /// Takes `key` if it is one of ours; returns false to pass it on.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, ConnInfoError> {
        match key {
            "sslmode" => self.sslmode = Some(SslMode::parse(value)?),
            "sslrootcert" => self.sslrootcert = Some(value.to_owned()),
            "sslcert" => self.sslcert = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "sslkey" => self.sslkey = Some(value.to_owned()).filter(|v| !v.is_empty()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// Refuses a user name or password that holds URL delimiters unencoded. [`ConnInfo::parse`]
/// copes with some of them, but libpq (psql, `pg_recvlogical`, the DBA's tools) reads such a
/// URL differently, and the redaction of errors could then miss the password.
fn check_userinfo(url: &str) -> Result<(), ConnInfoError> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    // libpq ends the authority at the first '/', and the user info at an '@' before it.
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path_before_query = &path[..path.find('?').unwrap_or(path.len())];
    let mangled = match authority.rfind('@') {
        Some(at) => authority[..at].contains(['@', '?', '#']),
        // "u:p/ss@h/db": the '/' in the password ended the authority early.
        None => path_before_query.contains('@'),
    };
    if mangled {
        return Err(ConnInfoError::new(
            "the user name or password contains '@', '/', '?' or '#'; percent-encode them \
             ('@' as %40, '/' as %2F, '?' as %3F, '#' as %23)",
        ));
    }
    Ok(())
}

/// Removes our keys from the URL's query string and returns the URL tokio-postgres can parse.
fn extract_from_url(s: &str, extra: &mut Extra) -> Result<String, ConnInfoError> {
    // tokio-postgres takes everything up to the first '@' as credentials, so a '?' inside an
    // unencoded password must not be mistaken for the query: look for it after the '@'.
    let after_creds = s.find('@').map_or(0, |i| i + 1);
    let Some(q) = s[after_creds..].find('?').map(|i| i + after_creds) else {
        return Ok(s.to_owned());
    };
    let (base, query) = (&s[..q], &s[q + 1..]);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            // Not echoed: a stray '&' inside an unencoded password lands here.
            return Err(ConnInfoError::new(
                "a URL parameter has no '=value' (percent-encode '&' and '=' inside values, \
                 e.g. in a password)"
                    .to_owned(),
            ));
        };
        if !extra.take(&percent_decode(key)?, &percent_decode(value)?)? {
            kept.push(pair);
        }
    }
    if kept.is_empty() {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}?{}", kept.join("&")))
    }
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnInfoError::new("bad percent-encoding in URL parameter"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::new("URL parameter is not UTF-8"))
}

/// Splits a libpq `key=value` string, keeps our keys and re-quotes the rest for tokio-postgres.
fn extract_from_key_value(s: &str, extra: &mut Extra) -> Result<String, ConnInfoError> {
    let mut kept = Vec::new();
    for (key, value) in split_key_values(s)? {
        if !extra.take(&key, &value)? {
            kept.push(format!("{key}={}", quote_always(&value)));
        }
    }
    Ok(kept.join(" "))
}

/// libpq's `key = value` grammar: whitespace around '=', values optionally single-quoted,
/// backslash escaping the next character.
fn split_key_values(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek() == Some(&'=') {
                return Err(ConnInfoError::new("'=' without a key before it"));
            }
            return Ok(out);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Not echoed: an unquoted password with a space lands here.
            return Err(ConnInfoError::new(
                "a word without '=' (expected key=value pairs or a postgres:// URL; quote values \
                 with spaces, e.g. password='a b')"
                    .to_owned(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::new(format!(
                            "unterminated quoted value for {key:?}"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Quotes a value for a `key=value` string.
fn quote_always(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Quotes a value for display only when it needs it.
fn quote(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        value.to_owned()
    } else {
        quote_always(value)
    }
}

/// `$PGUSER`, else the operating-system user, as libpq does.
fn default_user() -> Result<String, ConnInfoError> {
    if let Some(user) = std::env::var("PGUSER").ok().filter(|u| !u.is_empty()) {
        return Ok(user);
    }
    whoami::username().map_err(|e| {
        ConnInfoError::new(format!(
            "no user given and the operating-system user name is unknown ({e}); add user=… \
             to the connection string"
        ))
    })
}

fn resolve_targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, ConnInfoError> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let count = hosts.len().max(addrs.len()).max(1);
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(ConnInfoError::new(format!(
            "{} hosts but {} hostaddrs: give one hostaddr per host",
            hosts.len(),
            addrs.len()
        )));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(ConnInfoError::new(format!(
            "{} ports for {count} hosts: give one port, or one per host",
            ports.len()
        )));
    }
    let port_of = |i: usize| match ports {
        [] => DEFAULT_PORT,
        [one] => *one,
        many => many[i],
    };
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let port = port_of(i);
        let hostaddr = addrs.get(i).copied();
        let host = match (hosts.get(i), hostaddr) {
            (Some(PgHost::Tcp(name)), _) if !name.is_empty() => Host::Tcp(name.clone()),
            (Some(PgHost::Unix(dir)), _) => Host::Unix(dir.clone()),
            (_, Some(addr)) => Host::Tcp(addr.to_string()),
            (_, None) => default_host(port),
        };
        targets.push(Target {
            host,
            hostaddr,
            port,
        });
    }
    Ok(targets)
}

/// libpq's default is its compiled-in socket directory; take the usual ones when the socket
/// is there, else `localhost`.
fn default_host(port: u16) -> Host {
    for dir in ["/var/run/postgresql", "/run/postgresql", "/tmp"] {
        if Path::new(dir).join(format!(".s.PGSQL.{port}")).exists() {
            return Host::Unix(PathBuf::from(dir));
        }
    }
    Host::Tcp("localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnInfo {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_with_everything() {
        let info = parse(
            "postgres://alice:p%40ss@db.example.com:6543/shop?sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&application_name=cdc&connect_timeout=7",
        );
        assert_eq!(info.user(), "alice");
        assert_eq!(info.password(), Some(&b"p@ss"[..]));
        assert_eq!(info.dbname(), "shop");
        assert_eq!(info.sslmode(), SslMode::VerifyFull);
        assert_eq!(
            info.sslrootcert(),
            Some(&RootCert::File("/etc/ca.pem".into()))
        );
        assert_eq!(info.application_name(), "cdc");
        assert_eq!(info.connect_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(
            info.targets(),
            &[Target {
                host: Host::Tcp("db.example.com".into()),
                hostaddr: None,
                port: 6543
            }]
        );
    }

    #[test]
    fn key_value_with_quotes_and_spaces() {
        let info = parse(
            "host = db1 port=5433 user=bob password='it\\'s secret' dbname='my db' \
             sslmode=verify-ca sslrootcert='/path with space/ca.pem'",
        );
        assert_eq!(info.user(), "bob");
        assert_eq!(info.dbname(), "my db");
        assert_eq!(info.sslmode(), SslMode::VerifyCa);
        assert_eq!(
            info.sslrootcert(),
            Some(&RootCert::File("/path with space/ca.pem".into()))
        );
        assert_eq!(info.targets()[0].port, 5433);
    }

    #[test]
    fn escaped_quote_in_password_survives() {
        let info = parse(r"host=h user=u password='a\'b\\c d'");
        assert_eq!(info.password(), Some(&br"a'b\c d"[..]));
    }

    #[test]
    fn defaults_follow_libpq() {
        let info = parse("postgres://carol@localhost");
        assert_eq!(info.dbname(), "carol");
        assert_eq!(info.targets()[0].port, DEFAULT_PORT);
        assert_eq!(info.sslmode(), SslMode::Prefer);
        assert_eq!(info.application_name(), DEFAULT_APPLICATION_NAME);
        assert!(info.password().is_none());
    }

    #[test]
    fn unix_socket_directory_as_host() {
        let info = parse("host=/var/run/postgresql port=5439 user=x dbname=y");
        let t = &info.targets()[0];
        assert!(t.is_unix());
        assert_eq!(
            t.socket_path(),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5439"))
        );
        let url = parse("postgres://x@%2Ftmp%2Fpg/y");
        assert_eq!(url.targets()[0].host, Host::Unix("/tmp/pg".into()));
    }

    #[test]
    fn several_hosts_and_ports() {
        let info = parse("postgres://u@a:1,b:2/d");
        let ports: Vec<u16> = info.targets().iter().map(|t| t.port).collect();
        assert_eq!(ports, [1, 2]);
        assert_eq!(info.targets()[1].to_string(), "b:2");
    }

    #[test]
    fn hostaddr_keeps_host_for_certificate_checks() {
        let info = parse("host=db.internal hostaddr=10.0.0.5 port=5432 user=u");
        let t = &info.targets()[0];
        assert_eq!(t.host, Host::Tcp("db.internal".into()));
        assert_eq!(t.hostaddr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(t.to_string(), "db.internal (10.0.0.5):5432");
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        for s in [
            "postgres://u:hunter2@h/d",
            "host=h user=u password=hunter2",
            "host=h user=u password='hunter2 x'",
        ] {
            let info = parse(s);
            assert!(!info.to_string().contains("hunter2"), "{info}");
            assert!(!format!("{info:?}").contains("hunter2"));
            assert!(!info.redacted().contains("hunter2"));
            assert!(info.to_string().contains("password=***"));
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        for s in [
            "postgres://u:hunter2@h/d?sslmode=bogus",
            "postgres://u:hunter2@h/d?nosuchkey=1",
            "host=h password=hunter2 nosuchkey=1",
            "host=h password='hunter2",
            "host=h password=hunter2 port=notaport",
        ] {
            let e = ConnInfo::parse(s).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn bad_input_is_named() {
        let e = |s: &str| ConnInfo::parse(s).unwrap_err().to_string();
        assert!(e("host=h sslmode=verify").contains("invalid sslmode \"verify\""));
        assert!(e("host=h sslmode=allow").contains("not supported"));
        assert!(e("host=h nosuchkey=1").contains("nosuchkey"));
        assert!(e("host=h user").contains("a word without '='"));
        // A password with a space, unquoted: the error must not show any of it.
        assert!(!e("host=h password=correct horse").contains("horse"));
        assert!(!e("postgres://u@h/db?password=p4ss&w0rd").contains("w0rd"));
        assert!(e("host=h sslcert=/c.pem").contains("sslkey"));
        assert!(e("host=h sslrootcert=system sslmode=require").contains("verify-full"));
    }

    #[test]
    fn sslrootcert_system_implies_verify_full() {
        let info = parse("host=h user=u sslrootcert=system");
        assert_eq!(info.sslmode(), SslMode::VerifyFull);
        assert_eq!(info.sslrootcert(), Some(&RootCert::System));
    }

    #[test]
    fn a_config_url_is_refused_where_libpq_would_read_it_differently() {
        let e = |s: &str| ConnInfo::parse_url(s).unwrap_err().reason().to_owned();
        assert_eq!(
            e("host=h user=u"),
            "must start with postgres:// or postgresql://"
        );
        assert_eq!(
            e("mysql://h/db"),
            "must start with postgres:// or postgresql://"
        );
        for url in [
            "postgres://u:p#Zq9@h/db",
            "postgres://u:p?Zq9@h/db",
            "postgres://u:p/Zq9@h/db",
            "postgres://u:p@Zq9@h/db",
        ] {
            let said = e(url);
            assert!(said.contains("percent-encode"), "{url}: {said}");
            assert!(
                !said.contains("Zq9"),
                "{url}: the error quotes the password: {said}"
            );
        }
        assert!(ConnInfo::parse_url("postgres://u:p%23s%3F%40@h/db").is_ok());
        assert!(ConnInfo::parse_url("postgres://h/db?options=a@b").is_ok());
        assert!(ConnInfo::parse_url("postgresql:///erp?host=/run/postgresql").is_ok());
    }

    #[test]
    fn config_urls_parse_with_the_reasons_the_config_shows() {
        let reason = |s: &str| ConnInfo::parse_url(s).unwrap_err().reason().to_owned();
        assert!(
            ConnInfo::parse_url("postgres://walhook:pw@erp-db:5432/erp?sslmode=verify-full")
                .is_ok()
        );
        assert!(reason("postgres://h/db?sslmode=maybe").starts_with("invalid sslmode \"maybe\""));
        assert_eq!(reason("postgres://h/db?bogus=1"), "unknown option `bogus`");
        assert_eq!(
            reason("postgres://u:secret@h:port/db"),
            "invalid value for option `port`"
        );
        assert_eq!(
            reason("postgres://h/db?sslmode=allow"),
            "sslmode=allow is not supported; use sslmode=prefer or sslmode=disable"
        );
    }

    #[test]
    fn tokio_postgres_reasons_are_not_wrapped_twice() {
        let e = |s: &str| ConnInfo::parse(s).unwrap_err();
        assert_eq!(
            e("postgres://h/db?bogus=1").reason(),
            "unknown option `bogus`"
        );
        assert_eq!(
            e("postgres://u:secret@h:port/db").to_string(),
            "invalid connection string: invalid value for option `port`"
        );
    }

    #[test]
    fn question_mark_in_password_is_not_the_query() {
        let info = parse("postgres://u:a?b@h/d?sslmode=require");
        assert_eq!(info.password(), Some(&b"a?b"[..]));
        assert_eq!(info.sslmode(), SslMode::Require);
    }
}
