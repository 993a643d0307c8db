//! The scripted story of `walhook demo`: the steps of `sql/demo/story.sql` and the webhooks
//! each one must produce.

/// The sample ERP schema, with a few partners, a sales order and a work order.
pub const SCHEMA: &str = include_str!("../../sql/demo/schema.sql");

/// The story: steps separated by `-- step: <what happens>` lines.
const STORY: &str = include_str!("../../sql/demo/story.sql");

/// One business change of the story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What happens, for a person.
    pub title: String,
    /// The SQL that makes it happen (one transaction).
    pub sql: String,
}

/// The steps of the story, in order.
pub fn steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for chunk in STORY.split("\n-- step: ").skip(1) {
        let (title, sql) = chunk.split_once('\n').unwrap_or((chunk, ""));
        steps.push(Step {
            title: title.trim().to_owned(),
            sql: sql.trim().to_owned(),
        });
    }
    steps
}

/// The event types each step produces, in step order, as many times as each arrives.
pub const EXPECTED: &[&[&str]] = &[
    &["invoice.created"],
    &["invoice.partner-changed"],
    &["invoice.updated"],
    &["invoice.posted"],
    &[
        "stock_move.created",
        "stock_move.created",
        "stock_move.created",
    ],
    &["work_order.status-changed"],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_story_has_its_six_steps() {
        let steps = steps();
        assert_eq!(steps.len(), 6, "{steps:#?}");
        assert_eq!(steps.len(), EXPECTED.len());
        assert!(steps
            .iter()
            .all(|s| !s.sql.is_empty() && !s.title.is_empty()));
        assert!(steps[1]
            .sql
            .starts_with("UPDATE account_invoice SET partner_id"));
    }
}
