//! The configuration file (SPEC §2): loading, `${VAR}` expansion, validation.
//!
//! Loading runs in four steps, each in its own file:
//! 1. `document`: parse TOML keeping spans, expand `${VAR}` in string values (`expand`);
//! 2. `de` + `raw`: serde into the file's shape, rejecting unknown keys and wrong types;
//! 3. `validate` + `subscription`: check values, apply defaults, resolve objects;
//! 4. the result is a [`Config`] (`model`), or a [`ConfigError`] listing every problem as
//!    `file:line: key.path: message`.
//!
//! Invariant: nothing here touches the database or the network; `check` does that.
//! Invariant: no error message contains a secret (passwords are redacted, secret values are
//! never quoted).

mod de;
mod document;
mod error;
mod expand;
mod headers;
mod model;
mod net;
mod raw;
mod secret;
mod subscription;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

use crate::pg::ConnInfo;

pub use error::{ConfigError, Finding};
pub use model::{
    is_json_media_type, is_xml_media_type, table_list, Auth, BatchConfig, ChildConfig, Config,
    DeliveryConfig, HttpConfig, Method, Methods, ObjectConfig, Operation, Ordering, OutboxConfig,
    RateLimit, ResolvedObject, SourceConfig, SubscriptionConfig, TableName, Target, TemplateOrigin,
    TemplateText, DEFAULT_MAX_EVENT_BYTES, DEFAULT_RETRY_SCHEDULE, MIN_MAX_EVENT_BYTES,
};
pub use net::{check_webhook_url, url_template_example, AllowedNetwork, Cidr};
pub use secret::{redact_postgres_url, redact_webhook_url, Secret, SigningSecret, WebhookUrl};
pub use units::{format_duration, format_size, parse_duration, parse_size};

use document::Document;
use raw::RawConfig;

/// Environment variable that replaces `source.url` when set and non-empty.
pub const SOURCE_URL_ENV: &str = "WALHOOK_SOURCE_URL";

impl Config {
    /// Reads and validates the config file at `path`, expanding variables from the process
    /// environment. Error messages name the file as `path` was given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses and validates config `text`; `file` is used in messages, `env` looks up
    /// variables (for `${NAME}` and `WALHOOK_SOURCE_URL`).
    ///
    /// `${NAME}` in any string value is replaced by the variable (unset is an error); write
    /// `$${` for a literal `${`. Comments and keys are never expanded.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // An empty override counts as unset, as `WALHOOK_SOURCE_URL= walhook …` intends.
        let url_override = env(SOURCE_URL_ENV).filter(|url| !url.is_empty());
        // The file's url is replaced anyway, so its variables need not be set.
        let skip: &[&str] = if url_override.is_some() {
            &["source.url"]
        } else {
            &[]
        };
        let (root, doc) = Document::parse(file, text, env, skip).map_err(ConfigError::Invalid)?;
        let raw: RawConfig = de::from_node(&root).map_err(|error| {
            let path = error.path.unwrap_or_default();
            ConfigError::Invalid(vec![doc.finding(&path, error.message)])
        })?;
        validate::validate(raw, &doc, url_override).map_err(ConfigError::Invalid)
    }

    /// Distinct tables referenced by objects (headers and their documents' child tables)
    /// and subscriptions, in config order.
    pub fn tables(&self) -> Vec<TableName> {
        let mut tables: Vec<TableName> = Vec::new();
        let referenced = self
            .objects
            .values()
            .flat_map(ObjectConfig::tables)
            .chain(self.subscriptions.iter().map(|s| &s.object.config.table));
        for table in referenced {
            if !tables.contains(table) {
                tables.push(table.clone());
            }
        }
        tables
    }

    /// The outbox's connection: `outbox.url`, else the source's.
    pub fn outbox_conninfo(&self) -> &ConnInfo {
        self.outbox
            .conninfo
            .as_ref()
            .unwrap_or(&self.source.conninfo)
    }

    /// The key the outbox's connection comes from, for messages: `outbox.url` or `source.url`.
    pub fn outbox_key(&self) -> &'static str {
        if self.outbox.conninfo.is_some() {
            "outbox.url"
        } else {
            "source.url"
        }
    }

    /// The outbox's connection when `outbox.url` names another database than `source.url`
    /// (written differently), which then needs its own connection.
    pub fn separate_outbox(&self) -> Option<&ConnInfo> {
        match (&self.outbox.url, &self.outbox.conninfo) {
            (Some(url), Some(conninfo)) if url.expose() != self.source.url.expose() => {
                Some(conninfo)
            }
            _ => None,
        }
    }

    /// The subscription called `name`.
    pub fn subscription(&self, name: &str) -> Option<&SubscriptionConfig> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    /// The names of the configured subscriptions, in config order.
    pub fn subscription_names(&self) -> Vec<&str> {
        self.subscriptions.iter().map(|s| s.name.as_str()).collect()
    }
}
