//! DORA performance tiers as data keyed by report year: an embedded JSON table
//! (`tiers.json`, parsed once) maps a metric's value to elite / high / medium / low.
//!
//! The compute code never holds a threshold: a new report year is a new entry in the
//! table. Units: lead time and recovery time in seconds, change fail rate as a ratio in
//! `0.0..=1.0`, deployment frequency in deployments per day. Rework rate has no published
//! tiers for 2023, so asking for it is an error rather than a guess.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::compute::ServiceReport;

/// The built-in table, compiled into the binary.
const BUILTIN_JSON: &str = include_str!("tiers.json");

/// A performance level, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Elite performers.
    Elite,
    /// High performers.
    High,
    /// Medium performers.
    Medium,
    /// Low performers.
    Low,
}

impl Level {
    /// The label value used in `dora_performance_level{level}`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Elite => "elite",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
        }
    }
}

/// A DORA metric that can be tiered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Deployments per day.
    DeploymentFrequency,
    /// Change lead time (median), seconds.
    LeadTime,
    /// Change fail rate, ratio.
    ChangeFailRate,
    /// Failed deployment recovery time (median), seconds.
    RecoveryTime,
    /// Deployment rework rate, ratio.
    ReworkRate,
}

impl Metric {
    /// The label value used in `dora_performance_level{metric}`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeploymentFrequency => "deployment_frequency",
            Self::LeadTime => "lead_time",
            Self::ChangeFailRate => "change_fail_rate",
            Self::RecoveryTime => "recovery_time",
            Self::ReworkRate => "rework_rate",
        }
    }
}

/// Errors from loading or querying a tier table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TierError {
    /// The table is not valid JSON of the expected shape.
    #[error("invalid tier table: {0}")]
    Invalid(String),
    /// No table for that year or any earlier one.
    #[error("no DORA performance tiers for report year {0} or earlier")]
    UnknownYear(u16),
    /// The year's table has no tiers for that metric.
    #[error("report year {year} defines no tiers for {metric}")]
    NoTiers {
        /// The metric asked for.
        metric: &'static str,
        /// The year whose table was used.
        year: u16,
    },
    /// The value is NaN or infinite.
    #[error("{metric} value {value} is not a finite number")]
    NotFinite {
        /// The metric asked for.
        metric: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A tier-set name such as `dora-2023` could not be parsed.
    #[error("unknown tier set {0:?}: expected dora-<year>, e.g. dora-2023")]
    BadName(String),
}

/// One boundary: the value qualifies for the level when the comparison holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Bound {
    /// `value < x`
    Below(f64),
    /// `value <= x`
    AtMost(f64),
    /// `value > x`
    Above(f64),
    /// `value >= x`
    AtLeast(f64),
    /// `value >= 1 / days` (a rate per day of at least once every `days` days).
    AtLeastOnceEveryDays(f64),
}

impl Bound {
    fn holds(self, value: f64) -> bool {
        match self {
            Self::Below(x) => value < x,
            Self::AtMost(x) => value <= x,
            Self::Above(x) => value > x,
            Self::AtLeast(x) => value >= x,
            Self::AtLeastOnceEveryDays(days) => value >= 1.0 / days,
        }
    }

    fn is_valid(self) -> bool {
        match self {
            Self::Below(x) | Self::AtMost(x) | Self::Above(x) | Self::AtLeast(x) => x.is_finite(),
            Self::AtLeastOnceEveryDays(days) => days.is_finite() && days > 0.0,
        }
    }
}

/// A level and the bound that earns it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The level.
    pub level: Level,
    /// The condition, checked in table order; the first that holds wins.
    pub when: Bound,
}

/// The tiers of one metric in one year.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricTiers {
    /// Unit of the value, for humans reading the table.
    pub unit: String,
    /// Rules in order, best level first.
    pub levels: Vec<Rule>,
    /// The level when no rule holds.
    pub otherwise: Level,
}

impl MetricTiers {
    /// The level of `value`.
    #[must_use]
    pub fn classify(&self, value: f64) -> Level {
        self.levels
            .iter()
            .find(|rule| rule.when.holds(value))
            .map_or(self.otherwise, |rule| rule.level)
    }
}

/// The tiers of one report year.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YearTiers {
    /// Where the thresholds come from.
    pub source: String,
    /// Deployment frequency tiers.
    #[serde(default)]
    pub deployment_frequency: Option<MetricTiers>,
    /// Lead time tiers.
    #[serde(default)]
    pub lead_time: Option<MetricTiers>,
    /// Change fail rate tiers.
    #[serde(default)]
    pub change_fail_rate: Option<MetricTiers>,
    /// Recovery time tiers.
    #[serde(default)]
    pub recovery_time: Option<MetricTiers>,
    /// Rework rate tiers.
    #[serde(default)]
    pub rework_rate: Option<MetricTiers>,
}

impl YearTiers {
    /// The tiers of `metric`, if this year defines them.
    #[must_use]
    pub fn metric(&self, metric: Metric) -> Option<&MetricTiers> {
        match metric {
            Metric::DeploymentFrequency => self.deployment_frequency.as_ref(),
            Metric::LeadTime => self.lead_time.as_ref(),
            Metric::ChangeFailRate => self.change_fail_rate.as_ref(),
            Metric::RecoveryTime => self.recovery_time.as_ref(),
            Metric::ReworkRate => self.rework_rate.as_ref(),
        }
    }
}

/// Tiers for every known report year.
#[derive(Debug, Clone, PartialEq)]
pub struct TierTable {
    years: BTreeMap<u16, YearTiers>,
}

impl TierTable {
    /// Parses and validates a table: a JSON object from year to [`YearTiers`].
    ///
    /// # Errors
    /// [`TierError::Invalid`] on malformed JSON, a non-numeric year, or a non-finite bound.
    pub fn from_json(json: &str) -> Result<Self, TierError> {
        let raw: BTreeMap<String, YearTiers> =
            serde_json::from_str(json).map_err(|e| TierError::Invalid(e.to_string()))?;
        let mut years = BTreeMap::new();
        for (key, tiers) in raw {
            let year: u16 = key
                .parse()
                .map_err(|_| TierError::Invalid(format!("year {key:?} is not a number")))?;
            let all = [
                Metric::DeploymentFrequency,
                Metric::LeadTime,
                Metric::ChangeFailRate,
                Metric::RecoveryTime,
                Metric::ReworkRate,
            ];
            for metric in all {
                if let Some(m) = tiers.metric(metric)
                    && let Some(rule) = m.levels.iter().find(|r| !r.when.is_valid())
                {
                    return Err(TierError::Invalid(format!(
                        "{year} {}: invalid bound {:?}",
                        metric.as_str(),
                        rule.when
                    )));
                }
            }
            years.insert(year, tiers);
        }
        Ok(Self { years })
    }

    /// The table compiled into the binary, parsed on first use.
    ///
    /// # Errors
    /// [`TierError::Invalid`] if the embedded table is broken (a test guards against it).
    pub fn builtin() -> Result<&'static Self, TierError> {
        static BUILTIN: OnceLock<Result<TierTable, TierError>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Self::from_json(BUILTIN_JSON))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The tiers for `year`: that year's entry, else the latest earlier year's
    /// (a report year keeps the thresholds last published). Returns the year used.
    ///
    /// # Errors
    /// [`TierError::UnknownYear`] when no entry is at or before `year`.
    pub fn for_year(&self, year: u16) -> Result<(u16, &YearTiers), TierError> {
        self.years
            .range(..=year)
            .next_back()
            .map(|(y, t)| (*y, t))
            .ok_or(TierError::UnknownYear(year))
    }

    /// The level of `value` for `metric` under `year`'s tiers.
    ///
    /// # Errors
    /// Unknown year, no tiers for the metric that year, or a non-finite value.
    pub fn tier(&self, metric: Metric, value: f64, year: u16) -> Result<Level, TierError> {
        if !value.is_finite() {
            return Err(TierError::NotFinite {
                metric: metric.as_str(),
                value,
            });
        }
        let (used, tiers) = self.for_year(year)?;
        let m = tiers.metric(metric).ok_or(TierError::NoTiers {
            metric: metric.as_str(),
            year: used,
        })?;
        Ok(m.classify(value))
    }
}

/// The level of `value` for `metric` under the built-in tiers of report `year`.
///
/// # Errors
/// As [`TierTable::tier`].
pub fn tier(metric: Metric, value: f64, year: u16) -> Result<Level, TierError> {
    TierTable::builtin()?.tier(metric, value, year)
}

/// Parses a config tier-set name (`dora.tiers: dora-2023`) into its report year.
///
/// # Errors
/// [`TierError::BadName`] when the name is not `dora-<year>`.
pub fn parse_tier_set(name: &str) -> Result<u16, TierError> {
    name.strip_prefix("dora-")
        .and_then(|y| y.parse().ok())
        .ok_or_else(|| TierError::BadName(name.to_owned()))
}

/// The levels of one service report; `None` where the metric has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Levels {
    /// From deployments per day.
    pub deployment_frequency: Option<Level>,
    /// From the median lead time.
    pub lead_time: Option<Level>,
    /// From the change fail rate.
    pub change_fail_rate: Option<Level>,
    /// From the median recovery time.
    pub recovery_time: Option<Level>,
}

/// Rates a service report under `table`'s tiers of report `year`. Frequency is rated
/// only when the window saw at least one deployment.
///
/// # Errors
/// As [`TierTable::tier`].
pub fn assess(table: &TierTable, report: &ServiceReport, year: u16) -> Result<Levels, TierError> {
    let rate = |metric, value: Option<f64>| value.map(|v| table.tier(metric, v, year)).transpose();
    Ok(Levels {
        deployment_frequency: rate(
            Metric::DeploymentFrequency,
            (report.deployments > 0).then_some(report.deployment_frequency_per_day),
        )?,
        lead_time: rate(Metric::LeadTime, report.lead_time_median_seconds)?,
        change_fail_rate: rate(Metric::ChangeFailRate, report.change_fail_rate)?,
        recovery_time: rate(Metric::RecoveryTime, report.recovery_time_median_seconds)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: f64 = 3600.0;
    const DAY: f64 = 86400.0;

    #[test]
    fn builtin_table_parses_and_has_2023() {
        let table = TierTable::builtin().expect("embedded table parses");
        let (year, tiers) = table.for_year(2023).expect("2023 present");
        assert_eq!(year, 2023);
        assert!(tiers.source.contains("2023"));
    }

    #[test]
    fn boundaries_2023() {
        use Level::{Elite, High, Low, Medium};
        use Metric::{ChangeFailRate, DeploymentFrequency, LeadTime, RecoveryTime};
        let cases: &[(Metric, f64, Level)] = &[
            // lead time: elite < 1 day, high < 1 week, medium < 1 month (30 days)
            (LeadTime, 0.0, Elite),
            (LeadTime, DAY - 1.0, Elite),
            (LeadTime, DAY, High),
            (LeadTime, 7.0 * DAY - 1.0, High),
            (LeadTime, 7.0 * DAY, Medium),
            (LeadTime, 30.0 * DAY - 1.0, Medium),
            (LeadTime, 30.0 * DAY, Low),
            // recovery: elite < 1 hour, high < 1 day, medium < 1 week
            (RecoveryTime, HOUR - 1.0, Elite),
            (RecoveryTime, HOUR, High),
            (RecoveryTime, DAY - 1.0, High),
            (RecoveryTime, DAY, Medium),
            (RecoveryTime, 7.0 * DAY - 1.0, Medium),
            (RecoveryTime, 7.0 * DAY, Low),
            // change fail rate: elite <= 5 %, high <= 10 %, medium <= 15 %
            (ChangeFailRate, 0.0, Elite),
            (ChangeFailRate, 1.0 / 20.0, Elite),
            (ChangeFailRate, 3.0 / 60.0, Elite),
            (ChangeFailRate, 0.050_001, High),
            (ChangeFailRate, 1.0 / 10.0, High),
            (ChangeFailRate, 0.100_001, Medium),
            (ChangeFailRate, 3.0 / 20.0, Medium),
            (ChangeFailRate, 0.150_001, Low),
            (ChangeFailRate, 1.0, Low),
            // frequency per day: elite > 1/day, high >= weekly, medium >= monthly
            (DeploymentFrequency, 20.0, Elite),
            (DeploymentFrequency, 8.0 / 7.0, Elite),
            (DeploymentFrequency, 1.0, High),
            (DeploymentFrequency, 1.0 / 7.0, High),
            (DeploymentFrequency, 4.0 / 28.0, High),
            (DeploymentFrequency, 1.0 / 7.5, Medium),
            (DeploymentFrequency, 3.0 / 90.0, Medium),
            (DeploymentFrequency, 1.0 / 31.0, Low),
            (DeploymentFrequency, 0.0, Low),
        ];
        for &(metric, value, want) in cases {
            assert_eq!(
                tier(metric, value, 2023).expect("tiered"),
                want,
                "{metric:?} {value}"
            );
        }
    }

    #[test]
    fn later_year_falls_back_to_latest_earlier_table() {
        assert_eq!(tier(Metric::LeadTime, 10.0, 2030), Ok(Level::Elite));
        assert_eq!(
            tier(Metric::LeadTime, 10.0, 2019),
            Err(TierError::UnknownYear(2019))
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            tier(Metric::ReworkRate, 0.1, 2023),
            Err(TierError::NoTiers { year: 2023, .. })
        ));
        assert!(matches!(
            tier(Metric::LeadTime, f64::NAN, 2023),
            Err(TierError::NotFinite { .. })
        ));
        assert!(matches!(
            TierTable::from_json("{\"x\": {\"source\": \"s\"}}"),
            Err(TierError::Invalid(_))
        ));
        let bad = r#"{"2024": {"source": "s", "lead_time": {"unit": "s",
            "levels": [{"level": "elite", "when": {"at_least_once_every_days": 0.0}}],
            "otherwise": "low"}}}"#;
        assert!(matches!(
            TierTable::from_json(bad),
            Err(TierError::Invalid(_))
        ));
    }

    #[test]
    fn custom_table_is_data_not_code() {
        let json = r#"{"2024": {"source": "test", "rework_rate": {"unit": "ratio",
            "levels": [{"level": "elite", "when": {"below": 0.02}}],
            "otherwise": "medium"}}}"#;
        let table = TierTable::from_json(json).expect("parses");
        assert_eq!(table.tier(Metric::ReworkRate, 0.01, 2024), Ok(Level::Elite));
        assert_eq!(
            table.tier(Metric::ReworkRate, 0.02, 2025),
            Ok(Level::Medium)
        );
    }

    #[test]
    fn tier_set_names() {
        assert_eq!(parse_tier_set("dora-2023"), Ok(2023));
        assert!(parse_tier_set("2023").is_err());
        assert!(parse_tier_set("dora-latest").is_err());
    }
}
