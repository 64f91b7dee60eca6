//! Alerting in the agent (issue 6): rules evaluated over the agent's own metrics, grouped
//! notifications to Slack, Teams and generic webhooks, and commands back from chat.

pub mod eval;
pub mod expo;
pub mod history;
pub mod notify;
pub mod rules;
