//! The daemon's metrics (SPEC §7): one registry, handed to capture, delivery and the status
//! sampler, exposed by the HTTP server in the Prometheus text format.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// A float gauge.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Request durations and latencies: 1 ms to 10 min, the range a webhook can take from a
/// local receiver answering at once to a backlog drained after an outage.
const SECONDS_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// `{table, operation}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `schema.table`.
    pub table: String,
    /// create | update | delete (the vocabulary of events and `operations`).
    pub operation: &'static str,
}

/// `{subscription}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The subscription's name.
    pub subscription: String,
}

/// `{subscription, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The subscription's name.
    pub subscription: String,
    /// What the attempt meant for the delivery: success | retry | dead.
    pub outcome: &'static str,
}

/// The values of the `outcome` label of `walhook_delivery_attempts_total`: the words of
/// `outbox::queue::Outcome::as_str` (a test there keeps the two equal), listed here because
/// every subscription's series are created before its first attempt.
pub const ATTEMPT_OUTCOMES: [&str; 3] = ["success", "retry", "dead"];

/// `{table}` of `walhook_retention_deleted_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// delivery | event | attempt.
    pub table: &'static str,
}

/// `{table}` of `walhook_truncates_total`: a source table, `schema.table`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceTableLabels {
    /// `schema.table`.
    pub table: String,
}

/// `{object}` of `walhook_oversized_events_total`: an object's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// The object's name (its `name`, else its config key).
    pub object: String,
}

/// `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// applied | rejected.
    pub result: &'static str,
}

/// Every metric walhook exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 while the replication stream is connected.
    pub replication_connected: Gauge,
    /// WAL between the server's current position and what walhook confirmed.
    pub replication_lag_bytes: Gauge,
    /// WAL the slot makes the server keep.
    pub slot_retained_wal_bytes: Gauge,
    /// 1 while the slot holds more WAL than `source.max_retained_wal`.
    pub slot_retained_wal_over_limit: Gauge,
    /// Row changes read from the WAL.
    pub changes: Family<ChangeLabels, Counter>,
    /// Events committed to the outbox, per subscription.
    pub events: Family<SubscriptionLabels, Counter>,
    /// Rows backfills committed to the outbox, per subscription.
    pub backfill_rows: Family<SubscriptionLabels, Counter>,
    /// Backfills in state running.
    pub backfills_running: Gauge,
    /// Delivery attempts by outcome.
    pub attempts: Family<AttemptLabels, Counter>,
    /// HTTP request durations.
    pub delivery_duration: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    /// Source commit → 2xx.
    pub end_to_end_latency: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    /// Deliveries waiting.
    pub outbox_pending: Family<SubscriptionLabels, Gauge>,
    /// Age of the oldest waiting delivery.
    pub outbox_oldest_pending_seconds: Family<SubscriptionLabels, FloatGauge>,
    /// Dead deliveries kept in the outbox.
    pub outbox_dead: Family<SubscriptionLabels, Gauge>,
    /// 1 while the subscription's circuit breaker is open.
    pub circuit_open: Family<SubscriptionLabels, Gauge>,
    /// 1 while the subscription is deactivated (410 Gone) or paused.
    pub subscription_inactive: Family<SubscriptionLabels, Gauge>,
    /// Config reloads by result.
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// Outbox transactions committed by capture.
    pub outbox_commits: Counter,
    /// TRUNCATEs of configured tables, per `schema.table`.
    pub truncates: Family<SourceTableLabels, Counter>,
    /// 1 while a configured table (`schema.table` as configured) is known under another name.
    pub renamed_tables: Family<SourceTableLabels, Gauge>,
    /// Rows removed by `outbox.retention`, per table.
    pub retention_deleted: Family<TableLabels, Counter>,
    /// Document events bigger than `outbox.max_event_bytes`, recorded dead, per object.
    pub oversized_events: Family<ObjectLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("walhook");
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "walhook build", build);
        let metrics = Metrics {
            replication_connected: Gauge::default(),
            replication_lag_bytes: Gauge::default(),
            slot_retained_wal_bytes: Gauge::default(),
            slot_retained_wal_over_limit: Gauge::default(),
            changes: Family::default(),
            events: Family::default(),
            backfill_rows: Family::default(),
            backfills_running: Gauge::default(),
            attempts: Family::default(),
            delivery_duration: Family::new_with_constructor(seconds_histogram),
            end_to_end_latency: Family::new_with_constructor(seconds_histogram),
            outbox_pending: Family::default(),
            outbox_oldest_pending_seconds: Family::default(),
            outbox_dead: Family::default(),
            circuit_open: Family::default(),
            subscription_inactive: Family::default(),
            config_reloads: Family::default(),
            outbox_commits: Counter::default(),
            retention_deleted: Family::default(),
            truncates: Family::default(),
            renamed_tables: Family::default(),
            oversized_events: Family::default(),
            registry,
        };
        for result in ["applied", "rejected"] {
            let _ = metrics
                .config_reloads
                .get_or_create(&ReloadLabels { result });
        }
        for table in ["delivery", "event", "attempt"] {
            let _ = metrics
                .retention_deleted
                .get_or_create(&TableLabels { table });
        }
        metrics.register()
    }

    /// Creates the zero series of a subscription, so that dashboards and alerts see it
    /// before anything happens.
    pub fn know_subscription(&self, name: &str) {
        let labels = Self::subscription(name);
        let _ = self.events.get_or_create(&labels);
        let _ = self.backfill_rows.get_or_create(&labels);
        let _ = self.delivery_duration.get_or_create(&labels);
        let _ = self.end_to_end_latency.get_or_create(&labels);
        let _ = self.outbox_pending.get_or_create(&labels);
        let _ = self.outbox_oldest_pending_seconds.get_or_create(&labels);
        let _ = self.outbox_dead.get_or_create(&labels);
        let _ = self.circuit_open.get_or_create(&labels);
        let _ = self.subscription_inactive.get_or_create(&labels);
        for outcome in ATTEMPT_OUTCOMES {
            let _ = self.attempts.get_or_create(&AttemptLabels {
                subscription: name.to_owned(),
                outcome,
            });
        }
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "replication_connected",
            "1 while the replication stream is connected",
            self.replication_connected.clone(),
        );
        r.register_with_unit(
            "replication_lag",
            "WAL written by the server that walhook has not confirmed yet",
            Unit::Bytes,
            self.replication_lag_bytes.clone(),
        );
        r.register_with_unit(
            "slot_retained_wal",
            "WAL the server keeps for walhook's slot",
            Unit::Bytes,
            self.slot_retained_wal_bytes.clone(),
        );
        r.register(
            "slot_retained_wal_over_limit",
            "1 while the slot holds more WAL than source.max_retained_wal",
            self.slot_retained_wal_over_limit.clone(),
        );
        r.register(
            "changes",
            "Row changes of configured tables read from the WAL",
            self.changes.clone(),
        );
        r.register(
            "truncates",
            "TRUNCATEs of configured tables read from the WAL",
            self.truncates.clone(),
        );
        r.register(
            "oversized_events",
            "Events bigger than outbox.max_event_bytes, recorded as dead deliveries, per object",
            self.oversized_events.clone(),
        );
        r.register(
            "renamed_tables",
            "1 while a configured table (as configured) is known on the source under another name",
            self.renamed_tables.clone(),
        );
        r.register(
            "events",
            "Events committed to the outbox, per subscription",
            self.events.clone(),
        );
        r.register(
            "backfill_rows",
            "Rows backfills read and committed to the outbox, per subscription",
            self.backfill_rows.clone(),
        );
        r.register(
            "backfills_running",
            "Backfills asked for and not finished",
            self.backfills_running.clone(),
        );
        r.register(
            "delivery_attempts",
            "Delivery attempts by outcome (success, retry, dead)",
            self.attempts.clone(),
        );
        r.register_with_unit(
            "delivery_duration",
            "Webhook request durations",
            Unit::Seconds,
            self.delivery_duration.clone(),
        );
        r.register_with_unit(
            "end_to_end_latency",
            "Source commit to 2xx response",
            Unit::Seconds,
            self.end_to_end_latency.clone(),
        );
        r.register(
            "outbox_pending",
            "Deliveries waiting to be delivered",
            self.outbox_pending.clone(),
        );
        r.register_with_unit(
            "outbox_oldest_pending",
            "Age of the oldest waiting delivery",
            Unit::Seconds,
            self.outbox_oldest_pending_seconds.clone(),
        );
        r.register(
            "outbox_dead",
            "Dead deliveries in the outbox (replay them with walhook replay)",
            self.outbox_dead.clone(),
        );
        r.register(
            "circuit_open",
            "1 while the subscription's circuit breaker is open",
            self.circuit_open.clone(),
        );
        r.register(
            "subscription_inactive",
            "1 while the subscription is deactivated by 410 Gone",
            self.subscription_inactive.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result (applied, rejected)",
            self.config_reloads.clone(),
        );
        r.register(
            "outbox_commits",
            "Outbox transactions committed by capture",
            self.outbox_commits.clone(),
        );
        r.register(
            "retention_deleted",
            "Outbox rows removed by outbox.retention, per table (delivery, event, attempt)",
            self.retention_deleted.clone(),
        );
        self
    }

    /// The Prometheus/OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The `{subscription}` label set.
    pub fn subscription(name: &str) -> SubscriptionLabels {
        SubscriptionLabels {
            subscription: name.to_owned(),
        }
    }

    /// Counts a config edit that was applied.
    pub fn reload_applied(&self) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result: "applied" })
            .inc();
    }

    /// Counts a config edit that was rejected.
    pub fn reload_rejected(&self) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result: "rejected" })
            .inc();
    }

    /// Counts one delivery attempt's result, by its outcome's label (one of
    /// [`ATTEMPT_OUTCOMES`]).
    pub fn attempt(&self, subscription: &str, outcome: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                subscription: subscription.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts rows removed by retention from `table`.
    pub fn retention_removed(&self, table: &'static str, rows: u64) {
        self.retention_deleted
            .get_or_create(&TableLabels { table })
            .inc_by(rows);
    }

    /// Counts `rows` committed to the outbox by a backfill of `subscription`.
    pub fn backfill_rows(&self, subscription: &str, rows: u64) {
        self.backfill_rows
            .get_or_create(&Self::subscription(subscription))
            .inc_by(rows);
    }

    /// Records a request's duration.
    pub fn request_took(&self, subscription: &str, took: Duration) {
        self.delivery_duration
            .get_or_create(&Self::subscription(subscription))
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_exported_with_its_name() {
        let metrics = Metrics::new();
        metrics.know_subscription("invoices");
        metrics.attempt("invoices", "dead");
        metrics.request_took("invoices", Duration::from_millis(3));
        metrics
            .changes
            .get_or_create(&ChangeLabels {
                table: "public.account_invoice".into(),
                operation: "update",
            })
            .inc();
        let text = metrics.encode();
        for name in [
            "walhook_build_info{version=",
            "walhook_replication_connected ",
            "walhook_replication_lag_bytes ",
            "walhook_slot_retained_wal_bytes ",
            "walhook_changes_total{table=\"public.account_invoice\",operation=\"update\"} 1",
            "walhook_delivery_attempts_total{subscription=\"invoices\",outcome=\"dead\"} 1",
            "walhook_delivery_duration_seconds_bucket{le=\"0.005\",subscription=\"invoices\"} 1",
            "walhook_end_to_end_latency_seconds_count{subscription=\"invoices\"} 0",
            "walhook_outbox_pending{subscription=\"invoices\"} 0",
            "walhook_outbox_oldest_pending_seconds{subscription=\"invoices\"} 0",
            "walhook_events_total{subscription=\"invoices\"} 0",
            "walhook_backfill_rows_total{subscription=\"invoices\"} 0",
            "walhook_backfills_running 0",
            "walhook_delivery_attempts_total{subscription=\"invoices\",outcome=\"success\"} 0",
            "walhook_config_reloads_total{result=\"rejected\"} 0",
            "walhook_retention_deleted_total{table=\"event\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
