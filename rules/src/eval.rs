//! PromQL evaluation at one instant over a [`Storage`], with Prometheus's semantics.
//!
//! Expressions are parsed by the `promql-parser` crate; [`Query::parse`] then refuses, with the
//! construct and its position, everything this evaluator does not implement (subqueries, `@`,
//! functions outside [`SUPPORTED_FUNCTIONS`], ...), so a rule either loads and evaluates as
//! Prometheus does or does not load at all.
//!
//! Selection follows Prometheus 2.x, the version `promtool` on the test hosts runs: an instant
//! selector takes the newest sample in `[t - 5m, t]` unless it is a staleness marker, and a range
//! selector `x[r]` takes the samples in `[t - r, t]`, staleness markers dropped.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{
    self, AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};

use crate::storage::{Labels, METRIC_NAME, MatchOp, Matcher, Sample, Storage, is_stale};

/// Prometheus's default lookback delta: how far back an instant selector looks for a sample.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Every function the evaluator implements; any other is refused when the expression is loaded.
pub const SUPPORTED_FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "deriv",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "max_over_time",
    "min_over_time",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
];

/// Every aggregation operator the evaluator implements.
pub const SUPPORTED_AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "count_values",
    "quantile",
    "topk",
    "bottomk",
    "stddev",
    "stdvar",
    "group",
];

/// An expression that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("cannot parse PromQL {expr:?}: {message}")]
    Parse { expr: String, message: String },
    #[error("{construct} is not supported by sidelight's PromQL evaluator{position}")]
    Unsupported { construct: String, position: String },
}

/// An evaluation that failed (Prometheus fails the same evaluations).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(msg.into()))
}

/// A sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VSample {
    pub labels: Labels,
    /// Timestamp of the sample read (ms): `timestamp()` reports it.
    pub t: i64,
    pub v: f64,
}

/// A sample of a rule's result with its label set as evaluation carries it: shared with the
/// store or with the query's kept state, so that rule evaluation can tell a label set it saw
/// last cycle by its pointer and reuse what it built from it.
#[derive(Debug, Clone)]
pub(crate) struct SharedSample {
    pub(crate) labels: Arc<Labels>,
    /// Whether the metric name is left out of `labels`.
    pub(crate) without_name: bool,
    pub(crate) v: f64,
}

impl SharedSample {
    /// The sample's labels, as [`VSample::labels`] has them.
    pub(crate) fn to_labels(&self) -> Labels {
        let mut l = (*self.labels).clone();
        if self.without_name {
            l.remove(METRIC_NAME);
        }
        l
    }

    /// Whether the sample is labelled by this shared set with this treatment of the name
    /// (then its labels are those of the sample that was).
    pub(crate) fn labelled_by(&self, labels: &Arc<Labels>, without_name: bool) -> bool {
        Arc::ptr_eq(&self.labels, labels) && self.without_name == without_name
    }
}

/// The result of evaluating an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<VSample>),
    String(String),
}

/// A parsed expression that passed the supported-constructs check.
#[derive(Debug)]
pub struct Query {
    text: String,
    /// Boxed, so that its selectors keep their addresses when the query moves.
    expr: Box<Expr>,
    /// Each selector's matchers, built once: keyed by the selector's address in `expr`.
    selectors: SelectorMatchers,
    /// Each aggregation's groups from the last evaluation (except `count_values`, whose input
    /// labels are new each time): keyed by the aggregation's address in `expr`.
    aggregations: AggregationCaches,
}

/// Matchers by the address of their selector in a [`Query`]'s expression.
type SelectorMatchers = HashMap<usize, Vec<Matcher>, foldhash::fast::RandomState>;

/// Each aggregation's groups kept between evaluations, by the address of the aggregation in a
/// [`Query`]'s expression.
type AggregationCaches = HashMap<usize, Mutex<AggCache>, foldhash::fast::RandomState>;

/// What an aggregation keeps from one evaluation to the next, so that a sample whose label set
/// is the one (the same shared pointer) at the same position last time joins its group without
/// its grouping labels being read, and each group's output label set is built once.
///
/// Sound because `inputs` holds its label sets: a pointer held cannot be reused for another
/// label set, and a shared label set is never changed in place (it is copied first). Bounded:
/// `inputs` is the last evaluation's input (one pointer and a group per sample), and the groups
/// are dropped and found again when fewer than half of them were used in an evaluation.
#[derive(Debug, Default)]
struct AggCache {
    /// The last evaluation's input label sets in order (with whether the metric name was
    /// dropped), each with its group.
    inputs: Vec<(Arc<Labels>, bool, u32)>,
    groups: Vec<CachedGroup>,
    /// The first group of each key hash (the others follow `CachedGroup::next`).
    by_hash: HashMap<u64, usize, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
}

/// A group of an aggregation, as [`AggCache`] keeps it.
#[derive(Debug)]
struct CachedGroup {
    /// With `by` and up to four grouping labels: their values, in name order.
    values: Vec<Option<String>>,
    /// The group's labels, as the output carries them.
    labels: Arc<Labels>,
    /// The next group whose key has the same hash.
    next: Option<usize>,
}

fn for_each_aggregate<'e>(e: &'e Expr, f: &mut impl FnMut(&'e AggregateExpr)) {
    for_each_node(e, &mut |n| {
        if let Expr::Aggregate(a) = n {
            f(a);
        }
    });
}

/// Calls `f` with `e` and then every expression under it, depth first, each node before its
/// children (an aggregation's parameter before its operand).
fn for_each_node<'e>(e: &'e Expr, f: &mut impl FnMut(&'e Expr)) {
    f(e);
    match e {
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                for_each_node(p, f);
            }
            for_each_node(&a.expr, f);
        }
        Expr::Unary(u) => for_each_node(&u.expr, f),
        Expr::Binary(b) => {
            for_each_node(&b.lhs, f);
            for_each_node(&b.rhs, f);
        }
        Expr::Paren(p) => for_each_node(&p.expr, f),
        Expr::Call(c) => {
            for a in &c.args.args {
                for_each_node(a, f);
            }
        }
        Expr::Subquery(s) => for_each_node(&s.expr, f),
        Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

impl Clone for Query {
    fn clone(&self) -> Self {
        // The copy's selectors are at new addresses: its matchers are keyed again.
        Query::checked(self.text.clone(), (*self.expr).clone())
    }
}

/// The key of an aggregation in [`AggregationCaches`].
fn aggregation_key(a: &AggregateExpr) -> usize {
    std::ptr::from_ref(a) as usize
}

/// The key of a selector in [`SelectorMatchers`].
fn selector_key(vs: &VectorSelector) -> usize {
    std::ptr::from_ref(vs) as usize
}

/// Calls `f` with every selector of `e` and, for a range selector, its range. (Subqueries are
/// refused when a query is checked; their selectors are visited all the same.)
fn for_each_selector<'e>(e: &'e Expr, f: &mut impl FnMut(&'e VectorSelector, Option<i64>)) {
    for_each_node(e, &mut |n| match n {
        Expr::VectorSelector(vs) => f(vs, None),
        Expr::MatrixSelector(m) => f(&m.vs, Some(ms(&m.range))),
        _ => {}
    });
}

fn selector_matchers(e: &Expr, out: &mut SelectorMatchers) {
    for_each_selector(e, &mut |vs, _| {
        out.insert(selector_key(vs), matchers(vs));
    });
}

impl Query {
    /// Parses and checks an expression.
    pub fn parse(text: &str) -> Result<Query, ExprError> {
        let expr = parser::parse(text).map_err(|message| ExprError::Parse {
            expr: text.trim().to_owned(),
            message,
        })?;
        check(&expr, text)?;
        Ok(Query::checked(text.to_owned(), expr))
    }

    /// A query of a checked expression, with its selectors' matchers built.
    fn checked(text: String, expr: Expr) -> Query {
        let expr = Box::new(expr);
        let mut selectors = SelectorMatchers::default();
        selector_matchers(&expr, &mut selectors);
        let mut aggregations = AggregationCaches::default();
        for_each_aggregate(&expr, &mut |a| {
            if a.op.to_string() != "count_values" {
                aggregations.insert(aggregation_key(a), Mutex::default());
            }
        });
        Query {
            text,
            expr,
            selectors,
            aggregations,
        }
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every selector of the expression with how far back (ms) before the evaluation time it
    /// reads: range plus offset for a range selector, lookback plus offset for an instant one.
    pub fn selectors(&self) -> Vec<(Vec<Matcher>, i64)> {
        let mut out = Vec::new();
        collect_selectors(&self.expr, &mut out);
        out
    }

    /// The metric names the expression's selectors require (`x` or `{__name__="x"}`), and
    /// whether some selector requires none (it may read any metric).
    pub fn selected_names(&self) -> (Vec<&str>, bool) {
        fn walk<'e>(e: &'e Expr, names: &mut Vec<&'e str>, unnamed: &mut bool) {
            let mut selector = |vs: &'e VectorSelector| {
                let named = vs.name.as_deref().or_else(|| {
                    vs.matchers.matchers.iter().find_map(|m| {
                        (m.name == METRIC_NAME && matches!(m.op, PMatchOp::Equal))
                            .then_some(m.value.as_str())
                    })
                });
                match named {
                    Some(n) => names.push(n),
                    None => *unnamed = true,
                }
            };
            match e {
                Expr::VectorSelector(vs) => selector(vs),
                Expr::MatrixSelector(m) => selector(&m.vs),
                Expr::Aggregate(a) => {
                    if let Some(p) = &a.param {
                        walk(p, names, unnamed);
                    }
                    walk(&a.expr, names, unnamed);
                }
                Expr::Unary(u) => walk(&u.expr, names, unnamed),
                Expr::Binary(b) => {
                    walk(&b.lhs, names, unnamed);
                    walk(&b.rhs, names, unnamed);
                }
                Expr::Paren(p) => walk(&p.expr, names, unnamed),
                Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, names, unnamed)),
                Expr::Subquery(s) => walk(&s.expr, names, unnamed),
                Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
                Expr::Extension(_) => *unnamed = true,
            }
        }
        let mut names = Vec::new();
        let mut unnamed = false;
        walk(&self.expr, &mut names, &mut unnamed);
        (names, unnamed)
    }

    /// Evaluates the expression at `t` (ms since the epoch).
    pub fn eval(&self, storage: &dyn Storage, t: i64) -> Result<Value, EvalError> {
        let evaluator = Evaluator {
            storage,
            t,
            selectors: &self.selectors,
            aggregations: &self.aggregations,
        };
        Ok(match evaluator.eval(&self.expr)? {
            Val::Scalar(v) => Value::Scalar(v),
            Val::String(s) => Value::String(s),
            Val::Vector(v) => Value::Vector(v.into_iter().map(Elem::into_public).collect()),
        })
    }

    /// [`eval_vector`](Self::eval_vector) with the label sets left shared.
    pub(crate) fn eval_shared(
        &self,
        storage: &dyn Storage,
        t: i64,
    ) -> Result<Vec<SharedSample>, EvalError> {
        let evaluator = Evaluator {
            storage,
            t,
            selectors: &self.selectors,
            aggregations: &self.aggregations,
        };
        match evaluator.eval(&self.expr)? {
            Val::Vector(v) => Ok(v
                .into_iter()
                .map(|e| SharedSample {
                    labels: e.labels.map,
                    without_name: e.labels.without_name,
                    v: e.v,
                })
                .collect()),
            Val::Scalar(v) => Ok(vec![SharedSample {
                labels: Arc::new(Labels::new()),
                without_name: false,
                v,
            }]),
            Val::String(_) => err("rule result is not a vector or scalar"),
        }
    }

    /// Evaluates and returns an instant vector (a scalar becomes one sample without labels), as
    /// rule evaluation and `promtool`'s `promql_expr_test` do.
    pub fn eval_vector(&self, storage: &dyn Storage, t: i64) -> Result<Vec<VSample>, EvalError> {
        match self.eval(storage, t)? {
            Value::Vector(v) => Ok(v),
            Value::Scalar(v) => Ok(vec![VSample {
                labels: Labels::new(),
                t,
                v,
            }]),
            Value::String(_) => err("rule result is not a vector or scalar"),
        }
    }
}

/// Where `needle` first occurs in `text`, as " at line L, column C", or "" when it is not found.
fn position(text: &str, needle: &str) -> String {
    match text.find(needle) {
        Some(off) => {
            let before = &text[..off];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" (at line {line}, column {col})")
        }
        None => String::new(),
    }
}

fn unsupported(text: &str, construct: String, needle: &str) -> ExprError {
    ExprError::Unsupported {
        position: position(text, needle),
        construct,
    }
}

fn check_selector(vs: &VectorSelector, text: &str) -> Result<(), ExprError> {
    if vs.at.is_some() {
        return Err(unsupported(text, "the @ modifier".into(), "@"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported(
            text,
            "`or` inside a label matcher list".into(),
            " or ",
        ));
    }
    Ok(())
}

/// Refuses the constructs the evaluator does not implement.
fn check(expr: &Expr, text: &str) -> Result<(), ExprError> {
    match expr {
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !SUPPORTED_AGGREGATIONS.contains(&op.as_str()) {
                return Err(unsupported(text, format!("aggregation `{op}`"), &op));
            }
            if let Some(p) = &a.param {
                check(p, text)?;
            }
            check(&a.expr, text)
        }
        Expr::Unary(u) => check(&u.expr, text),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(unsupported(text, "the `fill` modifier".into(), "fill"));
            }
            check(&b.lhs, text)?;
            check(&b.rhs, text)
        }
        Expr::Paren(p) => check(&p.expr, text),
        Expr::Subquery(_) => Err(unsupported(text, "a subquery".into(), ":")),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(vs) => check_selector(vs, text),
        Expr::MatrixSelector(ms) => check_selector(&ms.vs, text),
        Expr::Call(c) => {
            let name = c.func.name;
            if !SUPPORTED_FUNCTIONS.contains(&name) {
                return Err(unsupported(
                    text,
                    format!("function `{name}`"),
                    &format!("{name}("),
                ));
            }
            if name == "timestamp" {
                // timestamp() of a vector selector reads the sample's own timestamp.
            }
            for a in &c.args.args {
                // Range functions take a range selector only (no subquery, checked above).
                check(a, text)?;
            }
            Ok(())
        }
        Expr::Extension(_) => Err(unsupported(text, "an extension expression".into(), "")),
    }
}

fn ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
    }
}

fn collect_selectors(e: &Expr, out: &mut Vec<(Vec<Matcher>, i64)>) {
    for_each_selector(e, &mut |vs, range| {
        let reach = offset_ms(&vs.offset).max(0) + range.unwrap_or(LOOKBACK_MS);
        out.push((matchers(vs), reach));
    });
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

fn matchers(vs: &VectorSelector) -> Vec<Matcher> {
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(METRIC_NAME, name));
    }
    for m in &vs.matchers.matchers {
        let op = match &m.op {
            PMatchOp::Equal => MatchOp::Equal,
            PMatchOp::NotEqual => MatchOp::NotEqual,
            PMatchOp::Re(r) => MatchOp::Re(r.clone()),
            PMatchOp::NotRe(r) => MatchOp::NotRe(r.clone()),
        };
        out.push(Matcher {
            name: m.name.clone(),
            op,
            value: m.value.clone(),
        });
    }
    out
}

/// A label set as evaluation carries it: shared with the store (or with another sample) until
/// an operation changes it, and with the metric name dropped by a flag until the labels are
/// needed, so that `rate(x[5m])` copies no label set. Equality, hashing and iteration see the
/// labels as they are (without the name once dropped).
#[derive(Debug, Clone)]
struct LabelSet {
    map: Arc<Labels>,
    without_name: bool,
}

impl LabelSet {
    fn new(map: Labels) -> Self {
        LabelSet {
            map: Arc::new(map),
            without_name: false,
        }
    }

    fn shared(map: &Arc<Labels>) -> Self {
        LabelSet {
            map: Arc::clone(map),
            without_name: false,
        }
    }

    fn get(&self, name: &str) -> Option<&String> {
        if self.without_name && name == METRIC_NAME {
            return None;
        }
        self.map.get(name)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        let skip_name = self.without_name;
        self.map
            .iter()
            .filter(move |(k, _)| !(skip_name && k.as_str() == METRIC_NAME))
    }

    fn drop_name(&mut self) {
        self.without_name = true;
    }

    /// The labels to change (copied if shared).
    fn to_mut(&mut self) -> &mut Labels {
        let map = Arc::make_mut(&mut self.map);
        if self.without_name {
            map.remove(METRIC_NAME);
            self.without_name = false;
        }
        map
    }

    fn into_labels(self) -> Labels {
        let mut map = Arc::unwrap_or_clone(self.map);
        if self.without_name {
            map.remove(METRIC_NAME);
        }
        map
    }

    /// The labels as a new set (for keys and signatures).
    fn to_labels(&self) -> Labels {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        (Arc::ptr_eq(&self.map, &other.map) && self.without_name == other.without_name)
            || self.iter().eq(other.iter())
    }
}

impl Eq for LabelSet {}

impl Hash for LabelSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for (k, v) in self.iter() {
            k.hash(state);
            v.hash(state);
        }
    }
}

/// A sample of an instant vector during evaluation.
#[derive(Debug, Clone)]
struct Elem {
    labels: LabelSet,
    t: i64,
    v: f64,
}

impl Elem {
    fn into_public(self) -> VSample {
        VSample {
            labels: self.labels.into_labels(),
            t: self.t,
            v: self.v,
        }
    }
}

/// A value during evaluation.
enum Val {
    Scalar(f64),
    Vector(Vec<Elem>),
    String(String),
}

/// Fails when two samples have the same labels (after an operation dropped the metric name).
fn check_unique(v: &[Elem]) -> Result<(), EvalError> {
    let mut seen: HashSet<&LabelSet, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(v.len(), foldhash::fast::RandomState::default());
    for s in v {
        if !seen.insert(&s.labels) {
            return err("vector cannot contain metrics with the same labelset");
        }
    }
    Ok(())
}

/// Kahan-compensated addition, as Prometheus sums over time.
fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's `quantile`: linear interpolation between the closest ranks.
fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Go sorts NaN first ("less" is a < b || a is NaN); total_cmp puts positive NaN last.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Prometheus's `bucketQuantile` over classic `le` buckets.
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce buckets with the same upper bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    // Ensure monotonic counts.
    let mut max = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn linear_regression(samples: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = samples[0].v;
    let mut const_y = true;
    for (i, &Sample { t, v }) in samples.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Prometheus's extrapolated `rate`, `increase` and `delta`. With `no_decrease` (no sample
/// lower than the one before it) a counter has no reset to add back.
fn extrapolated_rate(
    pts: &[Sample],
    no_decrease: bool,
    b: &RangeBounds,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let (range_start, range_end, range_s) = (b.start, b.end, b.range_s);
    if pts.len() < 2 {
        return None;
    }
    let first = pts[0];
    let last = pts[pts.len() - 1];
    let mut result = last.v - first.v;
    if is_counter && !no_decrease {
        let mut prev = first.v;
        for s in &pts[1..] {
            if s.v < prev {
                result += prev;
            }
            prev = s.v;
        }
    }
    let mut to_start = (first.t - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg_step = sampled / (pts.len() - 1) as f64;
    if is_counter && result > 0.0 && first.v >= 0.0 {
        let to_zero = sampled * (first.v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    let mut factor = interval / sampled;
    if is_rate {
        factor /= range_s;
    }
    Some(result * factor)
}

fn instant_value(pts: &[Sample], is_rate: bool) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let last = pts[pts.len() - 1];
    let prev = pts[pts.len() - 2];
    let mut v = if is_rate && last.v < prev.v {
        last.v
    } else {
        last.v - prev.v
    };
    let dt = last.t - prev.t;
    if dt == 0 {
        return None;
    }
    if is_rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

/// The labels `absent()` and `absent_over_time()` give their result: the equality matchers of
/// the selector (a label matched twice, or by another operator, is left out).
fn absent_labels(arg: &Expr) -> Labels {
    let vs = match unparen(arg) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut out = Labels::new();
    let mut has = HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, PMatchOp::Equal) && !has.contains(&m.name) {
            out.insert(m.name.clone(), m.value.clone());
            has.insert(m.name.clone());
        } else {
            out.remove(&m.name);
        }
    }
    out
}

/// Formats a float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` (count_values, `le`).
pub fn format_float_f(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Parses a float as Go's `strconv.ParseFloat` reads the `le` label.
fn parse_go_float(s: &str) -> Option<f64> {
    // Rust's parser takes what Go's does for decimal text (sign, exponent, `inf`, `infinity`,
    // `nan` in any case); Go only allows `_` between digits after a base prefix.
    if s.contains('_') {
        return None;
    }
    s.parse::<f64>().ok()
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The functions over a range vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeFn {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    PredictLinear,
    Resets,
    Changes,
    AvgOverTime,
    SumOverTime,
    CountOverTime,
    PresentOverTime,
    LastOverTime,
    MinOverTime,
    MaxOverTime,
    QuantileOverTime,
    StddevOverTime,
    StdvarOverTime,
}

/// What `visit_range` calls for each series: its labels, its samples in the range (staleness
/// markers dropped), and whether none is known to be lower than the one before it.
type RangeVisitor<'a> = dyn FnMut(&Arc<Labels>, &[Sample], bool) + 'a;

/// A range selector's bounds at the evaluation time.
#[derive(Debug, Clone, Copy)]
struct RangeBounds {
    /// First and last timestamp (ms) of the range, both included.
    start: i64,
    end: i64,
    /// The range's length in seconds.
    range_s: f64,
}

impl RangeFn {
    fn from_name(name: &str) -> Option<RangeFn> {
        Some(match name {
            "rate" => RangeFn::Rate,
            "increase" => RangeFn::Increase,
            "delta" => RangeFn::Delta,
            "irate" => RangeFn::Irate,
            "idelta" => RangeFn::Idelta,
            "deriv" => RangeFn::Deriv,
            "predict_linear" => RangeFn::PredictLinear,
            "resets" => RangeFn::Resets,
            "changes" => RangeFn::Changes,
            "avg_over_time" => RangeFn::AvgOverTime,
            "sum_over_time" => RangeFn::SumOverTime,
            "count_over_time" => RangeFn::CountOverTime,
            "present_over_time" => RangeFn::PresentOverTime,
            "last_over_time" => RangeFn::LastOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            "quantile_over_time" => RangeFn::QuantileOverTime,
            "stddev_over_time" => RangeFn::StddevOverTime,
            "stdvar_over_time" => RangeFn::StdvarOverTime,
            _ => return None,
        })
    }

    /// The function's value over one series' samples in the range (at least one, no
    /// staleness markers), or `None` when it has none (too few samples). `no_decrease` says
    /// that no sample is lower than the one before it, so counter resets need not be looked
    /// for; `t` is the evaluation time; `param` is `quantile_over_time`'s quantile or
    /// `predict_linear`'s horizon; `scratch` is reused between series.
    fn apply(
        self,
        pts: &[Sample],
        no_decrease: bool,
        b: &RangeBounds,
        t: i64,
        param: f64,
        scratch: &mut Vec<f64>,
    ) -> Option<f64> {
        let first = pts.first()?.v;
        let vals = || pts.iter().map(|p| p.v);
        match self {
            RangeFn::Rate => extrapolated_rate(pts, no_decrease, b, true, true),
            RangeFn::Increase => extrapolated_rate(pts, no_decrease, b, true, false),
            RangeFn::Delta => extrapolated_rate(pts, no_decrease, b, false, false),
            RangeFn::Irate => instant_value(pts, true),
            RangeFn::Idelta => instant_value(pts, false),
            RangeFn::Deriv => (pts.len() >= 2).then(|| linear_regression(pts, pts[0].t).0),
            RangeFn::PredictLinear => (pts.len() >= 2).then(|| {
                let (slope, intercept) = linear_regression(pts, t);
                slope * param + intercept
            }),
            RangeFn::Resets if no_decrease => Some(0.0),
            RangeFn::Resets => Some(pts.windows(2).filter(|w| w[1].v < w[0].v).count() as f64),
            RangeFn::Changes => Some(
                pts.windows(2)
                    .filter(|w| w[1].v != w[0].v && !(w[1].v.is_nan() && w[0].v.is_nan()))
                    .count() as f64,
            ),
            RangeFn::AvgOverTime => {
                let (mut mean, mut count, mut c) = (0.0f64, 0.0, 0.0);
                for v in vals() {
                    count += 1.0;
                    if mean.is_infinite() {
                        if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                            continue;
                        }
                        if !v.is_infinite() && !v.is_nan() {
                            continue;
                        }
                    }
                    (mean, c) = kahan_inc(v / count - mean / count, mean, c);
                }
                Some(if mean.is_infinite() { mean } else { mean + c })
            }
            RangeFn::SumOverTime => {
                let (mut sum, mut c) = (0.0, 0.0);
                for v in vals() {
                    (sum, c) = kahan_inc(v, sum, c);
                }
                Some(if f64::is_infinite(sum) { sum } else { sum + c })
            }
            RangeFn::CountOverTime => Some(pts.len() as f64),
            RangeFn::PresentOverTime => Some(1.0),
            RangeFn::LastOverTime => pts.last().map(|p| p.v),
            RangeFn::MinOverTime => {
                let mut m = first;
                for v in vals() {
                    if v < m || m.is_nan() {
                        m = v;
                    }
                }
                Some(m)
            }
            RangeFn::MaxOverTime => {
                let mut m = first;
                for v in vals() {
                    if v > m || m.is_nan() {
                        m = v;
                    }
                }
                Some(m)
            }
            RangeFn::QuantileOverTime => {
                scratch.clear();
                scratch.extend(vals());
                Some(quantile(param, scratch))
            }
            RangeFn::StddevOverTime | RangeFn::StdvarOverTime => {
                let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for v in vals() {
                    count += 1.0;
                    let delta = v - (mean + cm);
                    (mean, cm) = kahan_inc(delta / count, mean, cm);
                    (aux, ca) = kahan_inc(delta * (v - (mean + cm)), aux, ca);
                }
                let var = (aux + ca) / count;
                Some(if self == RangeFn::StdvarOverTime {
                    var
                } else {
                    var.sqrt()
                })
            }
        }
    }
}

/// Argument `i` of a call.
fn arg_of(c: &Call, i: usize) -> Result<&Expr, EvalError> {
    c.args
        .args
        .get(i)
        .map(|b| b.as_ref())
        .ok_or_else(|| EvalError(format!("{}: missing argument {}", c.func.name, i + 1)))
}

fn drop_name(mut l: LabelSet) -> LabelSet {
    l.drop_name();
    l
}

struct Evaluator<'a> {
    storage: &'a dyn Storage,
    /// Evaluation time, ms.
    t: i64,
    /// The query's selectors' matchers.
    selectors: &'a SelectorMatchers,
    /// The query's aggregations' groups.
    aggregations: &'a AggregationCaches,
}

impl Evaluator<'_> {
    fn eval(&self, e: &Expr) -> Result<Val, EvalError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(v) => {
                    let out: Vec<Elem> = v
                        .into_iter()
                        .map(|s| Elem {
                            labels: drop_name(s.labels),
                            t: s.t,
                            v: -s.v,
                        })
                        .collect();
                    check_unique(&out)?;
                    Ok(Val::Vector(out))
                }
                Val::String(_) => err("unary minus on a string"),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.select_instant(vs)?)),
            Expr::MatrixSelector(_) => err("a range vector cannot be the result of an expression"),
            Expr::Aggregate(a) => self.aggregate(a),
            Expr::Binary(b) => self.binary(b),
            Expr::Call(c) => self.call(c),
            Expr::Subquery(_) | Expr::Extension(_) => err("unsupported expression"),
        }
    }

    fn select_instant(&self, vs: &VectorSelector) -> Result<Vec<Elem>, EvalError> {
        if vs.at.is_some() {
            return err("the @ modifier is not supported");
        }
        let reference = self.t - offset_ms(&vs.offset);
        let owned;
        let matchers = match self.selectors.get(&selector_key(vs)) {
            Some(m) => m.as_slice(),
            None => {
                owned = matchers(vs);
                owned.as_slice()
            }
        };
        let mut out = Vec::with_capacity(self.storage.size_hint(matchers));
        // The store lends the samples in [reference - lookback, reference]: the newest one is
        // the value unless it marks the series stale.
        self.storage.visit(
            matchers,
            reference - LOOKBACK_MS,
            reference,
            &mut |labels, samples, _| {
                if let Some(last) = samples.last()
                    && !is_stale(last.v)
                {
                    out.push(Elem {
                        labels: LabelSet::shared(labels),
                        t: last.t,
                        v: last.v,
                    });
                }
            },
        );
        Ok(out)
    }

    /// A range selector (possibly in parentheses) with its bounds at the evaluation time.
    fn range_selector<'e>(
        &self,
        e: &'e Expr,
    ) -> Result<(&'e MatrixSelector, RangeBounds), EvalError> {
        let Expr::MatrixSelector(m) = unparen(e) else {
            return err("expected a range vector selector");
        };
        let end = self.t - offset_ms(&m.vs.offset);
        Ok((
            m,
            RangeBounds {
                start: end - ms(&m.range),
                end,
                range_s: m.range.as_secs_f64(),
            },
        ))
    }

    /// Calls `f` with every series of a range selector that has samples in its range, those
    /// samples, staleness markers dropped, and whether no sample is known to be lower than the
    /// one before it (so a counter has no reset). Returns whether the selector names the metric
    /// (`__name__="x"`), in which case every series visited has that name.
    /// `reserve` is called first with about how many series there are.
    fn visit_range(
        &self,
        m: &MatrixSelector,
        b: &RangeBounds,
        reserve: &mut dyn FnMut(usize),
        f: &mut RangeVisitor<'_>,
    ) -> bool {
        let owned;
        let matchers = match self.selectors.get(&selector_key(&m.vs)) {
            Some(m) => m.as_slice(),
            None => {
                owned = matchers(&m.vs);
                owned.as_slice()
            }
        };
        reserve(self.storage.size_hint(matchers));
        let one_name = matchers
            .iter()
            .any(|m| matches!(m.op, MatchOp::Equal) && m.name == METRIC_NAME);
        let mut without_stale = Vec::new();
        self.storage
            .visit(matchers, b.start, b.end, &mut |labels, samples, facts| {
                let pts = if facts.may_have_stale(samples) && samples.iter().any(|x| is_stale(x.v))
                {
                    without_stale.clear();
                    without_stale.extend(samples.iter().filter(|x| !is_stale(x.v)));
                    &without_stale[..]
                } else {
                    samples
                };
                if !pts.is_empty() {
                    f(labels, pts, !facts.may_decrease(pts));
                }
            });
        one_name
    }

    fn scalar_arg(&self, e: &Expr) -> Result<f64, EvalError> {
        match self.eval(e)? {
            Val::Scalar(v) => Ok(v),
            _ => err("expected a scalar argument"),
        }
    }

    fn vector_arg(&self, e: &Expr) -> Result<Vec<Elem>, EvalError> {
        match self.eval(e)? {
            Val::Vector(v) => Ok(v),
            _ => err("expected an instant vector argument"),
        }
    }

    fn string_arg(e: &Expr) -> Result<String, EvalError> {
        match unparen(e) {
            Expr::StringLiteral(s) => Ok(s.val.clone()),
            _ => err("expected a string argument"),
        }
    }

    fn call(&self, c: &Call) -> Result<Val, EvalError> {
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr, EvalError> {
            args.get(i)
                .map(|b| b.as_ref())
                .ok_or_else(|| EvalError(format!("{}: missing argument {}", c.func.name, i + 1)))
        };
        let name = c.func.name;
        let map_vec = |f: &dyn Fn(f64) -> f64| -> Result<Val, EvalError> {
            let v = self.vector_arg(arg(0)?)?;
            let out: Vec<Elem> = v
                .into_iter()
                .map(|s| Elem {
                    labels: drop_name(s.labels),
                    t: s.t,
                    v: f(s.v),
                })
                .collect();
            check_unique(&out)?;
            Ok(Val::Vector(out))
        };
        match name {
            "time" => Ok(Val::Scalar(self.t as f64 / 1000.0)),
            "vector" => Ok(Val::Vector(vec![Elem {
                labels: LabelSet::new(Labels::new()),
                t: self.t,
                v: self.scalar_arg(arg(0)?)?,
            }])),
            "scalar" => {
                let v = self.vector_arg(arg(0)?)?;
                Ok(Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "abs" => map_vec(&f64::abs),
            "ceil" => map_vec(&f64::ceil),
            "floor" => map_vec(&f64::floor),
            "sqrt" => map_vec(&f64::sqrt),
            "round" => {
                let to = match args.get(1) {
                    Some(a) => self.scalar_arg(a)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                map_vec(&|v| (v * inv + 0.5).floor() / inv)
            }
            "clamp" => {
                let min = self.scalar_arg(arg(1)?)?;
                let max = self.scalar_arg(arg(2)?)?;
                if max < min {
                    return Ok(Val::Vector(Vec::new()));
                }
                map_vec(&|v| go_max(min, go_min(max, v)))
            }
            "clamp_min" => {
                let min = self.scalar_arg(arg(1)?)?;
                map_vec(&|v| go_max(min, v))
            }
            "clamp_max" => {
                let max = self.scalar_arg(arg(1)?)?;
                map_vec(&|v| go_min(max, v))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector_arg(arg(0)?)?;
                let desc = name == "sort_desc";
                // NaN sorts last either way.
                v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if desc => b.v.total_cmp(&a.v),
                    _ => a.v.total_cmp(&b.v),
                });
                Ok(Val::Vector(v))
            }
            "timestamp" => {
                let a = arg(0)?;
                let direct = matches!(unparen(a), Expr::VectorSelector(_));
                let v = self.vector_arg(a)?;
                let out: Vec<Elem> = v
                    .into_iter()
                    .map(|s| Elem {
                        labels: drop_name(s.labels),
                        t: s.t,
                        v: if direct { s.t } else { self.t } as f64 / 1000.0,
                    })
                    .collect();
                check_unique(&out)?;
                Ok(Val::Vector(out))
            }
            "absent" => {
                let v = self.vector_arg(arg(0)?)?;
                Ok(Val::Vector(if v.is_empty() {
                    vec![Elem {
                        labels: LabelSet::new(absent_labels(arg(0)?)),
                        t: self.t,
                        v: 1.0,
                    }]
                } else {
                    Vec::new()
                }))
            }
            "absent_over_time" => {
                let (m, b) = self.range_selector(arg(0)?)?;
                let mut present = false;
                self.visit_range(m, &b, &mut |_| {}, &mut |_, _, _| present = true);
                Ok(Val::Vector(if !present {
                    vec![Elem {
                        labels: LabelSet::new(absent_labels(arg(0)?)),
                        t: self.t,
                        v: 1.0,
                    }]
                } else {
                    Vec::new()
                }))
            }
            "histogram_quantile" => {
                let q = self.scalar_arg(arg(0)?)?;
                let v = self.vector_arg(arg(1)?)?;
                let mut groups: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
                let mut order = Vec::new();
                for s in v {
                    let Some(ub) = s.labels.get("le").and_then(|le| parse_go_float(le)) else {
                        continue;
                    };
                    // Buckets are grouped by every label but `le`, the name included; the
                    // result drops the name (two histograms that differ only by name collide).
                    let mut key = s.labels.to_labels();
                    key.remove("le");
                    let e = groups.entry(key.clone()).or_default();
                    if e.is_empty() {
                        order.push(key);
                    }
                    e.push((ub, s.v));
                }
                let mut out = Vec::with_capacity(order.len());
                for key in order {
                    if let Some(mut b) = groups.remove(&key) {
                        out.push(Elem {
                            labels: drop_name(LabelSet::new(key)),
                            t: self.t,
                            v: bucket_quantile(q, &mut b),
                        });
                    }
                }
                check_unique(&out)?;
                Ok(Val::Vector(out))
            }
            "label_replace" => {
                let v = self.vector_arg(arg(0)?)?;
                let dst = Self::string_arg(arg(1)?)?;
                let repl = Self::string_arg(arg(2)?)?;
                let src = Self::string_arg(arg(3)?)?;
                let re_text = Self::string_arg(arg(4)?)?;
                let re = regex::Regex::new(&format!("^(?s:{re_text})$")).map_err(|_| {
                    EvalError(format!(
                        "invalid regular expression in label_replace(): {re_text}"
                    ))
                })?;
                if !valid_label_name(&dst) {
                    return err(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    ));
                }
                let mut out = Vec::with_capacity(v.len());
                for mut s in v {
                    let src_val = s.labels.get(&src).cloned().unwrap_or_default();
                    if let Some(caps) = re.captures(&src_val) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        let labels = s.labels.to_mut();
                        labels.remove(&dst);
                        if !res.is_empty() {
                            labels.insert(dst.clone(), res);
                        }
                    }
                    out.push(s);
                }
                check_unique(&out)?;
                Ok(Val::Vector(out))
            }
            "label_join" => {
                let v = self.vector_arg(arg(0)?)?;
                let dst = Self::string_arg(arg(1)?)?;
                let sep = Self::string_arg(arg(2)?)?;
                let mut srcs = Vec::new();
                for a in args.iter().skip(3) {
                    let s = Self::string_arg(a)?;
                    if !valid_label_name(&s) {
                        return err(format!("invalid source label name in label_join(): {s}"));
                    }
                    srcs.push(s);
                }
                if !valid_label_name(&dst) {
                    return err(format!(
                        "invalid destination label name in label_join(): {dst}"
                    ));
                }
                let mut out = Vec::with_capacity(v.len());
                for mut s in v {
                    let joined = srcs
                        .iter()
                        .map(|l| s.labels.get(l).map_or("", String::as_str))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    if joined.is_empty() {
                        s.labels.to_mut().remove(&dst);
                    } else {
                        s.labels.to_mut().insert(dst.clone(), joined);
                    }
                    out.push(s);
                }
                check_unique(&out)?;
                Ok(Val::Vector(out))
            }
            _ => self.range_function(c),
        }
    }

    /// The functions over a range vector: one output sample per input series with samples.
    fn range_function(&self, c: &Call) -> Result<Val, EvalError> {
        let name = c.func.name;
        let args = &c.args.args;
        let Some(func) = RangeFn::from_name(name) else {
            return err(format!("function {name} is not supported"));
        };
        // The range argument is the first one, except for quantile_over_time.
        let (range_idx, param) = match func {
            RangeFn::QuantileOverTime => (1, self.scalar_arg(arg_of(c, 0)?)?),
            RangeFn::PredictLinear => (0, self.scalar_arg(arg_of(c, 1)?)?),
            _ => (0, 0.0),
        };
        let Some(range_arg) = args.get(range_idx) else {
            return err(format!("{name}: missing range argument"));
        };
        let (m, b) = self.range_selector(range_arg)?;
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let hint = std::cell::Cell::new(0);
        let mut reserve = |n: usize| hint.set(n);
        let one_name = self.visit_range(m, &b, &mut reserve, &mut |labels, pts, no_decrease| {
            if out.capacity() == 0 {
                out.reserve(hint.get());
            }
            if let Some(v) = func.apply(pts, no_decrease, &b, self.t, param, &mut scratch) {
                let mut labels = LabelSet::shared(labels);
                if func != RangeFn::LastOverTime {
                    labels.drop_name();
                }
                out.push(Elem {
                    labels,
                    t: self.t,
                    v,
                });
            }
        });
        // The series visited have distinct labels; dropping the name can only make two equal
        // when their names differ.
        if func != RangeFn::LastOverTime && !one_name {
            check_unique(&out)?;
        }
        Ok(Val::Vector(out))
    }

    fn aggregate(&self, a: &AggregateExpr) -> Result<Val, EvalError> {
        let op = a.op.to_string();
        let vec = self.vector_arg(&a.expr)?;
        let (by, mut grouping): (bool, Vec<String>) = match &a.modifier {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (true, Vec::new()),
        };
        let mut k = 0i64;
        let mut q = 0.0;
        let mut value_label = String::new();
        match op.as_str() {
            "topk" | "bottomk" => {
                let Some(p) = &a.param else {
                    return err(format!("{op}: missing parameter"));
                };
                let f = self.scalar_arg(p)?;
                if !(-9.223_372_036_854_776e18..=9.223_372_036_854_776e18).contains(&f) {
                    return err(format!("Scalar value {f} overflows int64"));
                }
                k = f as i64;
                if k < 1 {
                    return Ok(Val::Vector(Vec::new()));
                }
            }
            "quantile" => {
                let Some(p) = &a.param else {
                    return err("quantile: missing parameter");
                };
                q = self.scalar_arg(p)?;
            }
            "count_values" => {
                let Some(p) = &a.param else {
                    return err("count_values: missing parameter");
                };
                value_label = match self.eval(p)? {
                    Val::String(s) => s,
                    _ => return err("count_values: expected a string parameter"),
                };
                if !valid_label_name(&value_label) {
                    return err(format!("invalid label name {value_label:?}"));
                }
                if by {
                    grouping.push(value_label.clone());
                }
            }
            _ => {}
        }
        /// A group's accumulators in one evaluation.
        struct Acc {
            /// The group's index in the cache.
            group: usize,
            value: f64,
            mean: f64,
            count: f64,
            members: Vec<Elem>,
        }
        let in_key = |k: &String| {
            if by {
                grouping.iter().any(|g| g == k)
            } else {
                k != METRIC_NAME && !grouping.iter().any(|g| g == k)
            }
        };
        // With `by`, a sample's key is found by looking its grouping labels up.
        let mut by_names: Vec<&String> = grouping.iter().collect();
        by_names.sort();
        by_names.dedup();
        let key_eq = |key: &Labels, l: &LabelSet| {
            if by {
                let mut present = 0;
                let same = by_names.iter().all(|&n| match l.get(n) {
                    Some(v) => {
                        present += 1;
                        key.get(n) == Some(v)
                    }
                    None => !key.contains_key(n),
                });
                same && present == key.len()
            } else {
                key.iter().eq(l.iter().filter(|(k, _)| in_key(k)))
            }
        };
        let keeps_members = matches!(op.as_str(), "topk" | "bottomk" | "quantile");
        let op_is_sum = op == "sum";
        let add_to_group = |g: &mut Acc, s: Elem| {
            if op_is_sum {
                g.value += s.v;
                return;
            }
            match op.as_str() {
                "sum" => g.value += s.v,
                "avg" => {
                    g.count += 1.0;
                    if g.mean.is_infinite() {
                        if s.v.is_infinite() && (g.mean > 0.0) == (s.v > 0.0) {
                            return;
                        }
                        if !s.v.is_infinite() && !s.v.is_nan() {
                            return;
                        }
                    }
                    g.mean += s.v / g.count - g.mean / g.count;
                }
                "max" if g.value < s.v || g.value.is_nan() => g.value = s.v,
                "min" if g.value > s.v || g.value.is_nan() => g.value = s.v,
                "count" | "count_values" => g.count += 1.0,
                "stddev" | "stdvar" => {
                    g.count += 1.0;
                    let delta = s.v - g.mean;
                    g.mean += delta / g.count;
                    g.value += delta * (s.v - g.mean);
                }
                "topk" | "bottomk" | "quantile" => g.members.push(s),
                _ => {}
            }
        };
        // Whether groups are told apart by their `values` alone (`by` with up to four names).
        let fixed_key = by && by_names.len() <= 4;
        let count_values = op == "count_values";
        let mut local = AggCache::default();
        let mut guard: Option<MutexGuard<'_, AggCache>> = None;
        let cache: &mut AggCache = match self.aggregations.get(&aggregation_key(a)) {
            Some(m) => guard.insert(m.lock().unwrap_or_else(PoisonError::into_inner)),
            None => &mut local,
        };
        // This evaluation's accumulators, in the order their groups are first met (the output's
        // order); `acc_of` maps a cached group to its accumulator.
        let mut accs: Vec<Acc> = Vec::new();
        let mut acc_of: Vec<u32> = vec![u32::MAX; cache.groups.len()];
        let mut last_group: Option<usize> = None;
        let inputs = vec.len();
        for (i, mut s) in vec.into_iter().enumerate() {
            if count_values {
                s.labels
                    .to_mut()
                    .insert(value_label.clone(), format_float_f(s.v));
            }
            // The same label set at the same position as last time: the same group.
            let known = cache.inputs.get(i).and_then(|(l, without_name, g)| {
                (Arc::ptr_eq(l, &s.labels.map) && *without_name == s.labels.without_name)
                    .then_some(*g as usize)
            });
            let gi = match known {
                Some(gi) => gi,
                None => {
                    let gi = find_group(
                        cache, &s.labels, &by_names, fixed_key, last_group, &key_eq, &in_key,
                    );
                    let entry = (
                        Arc::clone(&s.labels.map),
                        s.labels.without_name,
                        u32::try_from(gi).unwrap_or(u32::MAX),
                    );
                    match cache.inputs.get_mut(i) {
                        Some(e) => *e = entry,
                        None => cache.inputs.push(entry),
                    }
                    if acc_of.len() < cache.groups.len() {
                        acc_of.resize(cache.groups.len(), u32::MAX);
                    }
                    gi
                }
            };
            last_group = Some(gi);
            match acc_of[gi] {
                u32::MAX => {
                    acc_of[gi] = u32::try_from(accs.len()).unwrap_or(u32::MAX);
                    let value = match op.as_str() {
                        "stddev" | "stdvar" => 0.0,
                        "group" => 1.0,
                        _ => s.v,
                    };
                    accs.push(Acc {
                        group: gi,
                        value,
                        mean: s.v,
                        count: 1.0,
                        members: if keeps_members { vec![s] } else { Vec::new() },
                    });
                }
                ai => add_to_group(&mut accs[ai as usize], s),
            }
        }
        cache.inputs.truncate(inputs);
        let mut out = Vec::with_capacity(accs.len());
        for g in &mut accs {
            let v = match op.as_str() {
                "avg" => g.mean,
                "count" | "count_values" => g.count,
                "stdvar" => g.value / g.count,
                "stddev" => (g.value / g.count).sqrt(),
                "quantile" => {
                    let mut vals: Vec<f64> = g.members.iter().map(|m| m.v).collect();
                    quantile(q, &mut vals)
                }
                "topk" | "bottomk" => {
                    let mut m = std::mem::take(&mut g.members);
                    // NaN ranks last for both, as Prometheus's heaps do.
                    let top = op == "topk";
                    m.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if top => b.v.total_cmp(&a.v),
                        _ => a.v.total_cmp(&b.v),
                    });
                    m.truncate(usize::try_from(k).unwrap_or(usize::MAX));
                    out.extend(m);
                    continue;
                }
                _ => g.value,
            };
            out.push(Elem {
                labels: LabelSet::shared(&cache.groups[g.group].labels),
                t: self.t,
                v,
            });
        }
        // Groups no longer met are forgotten once they are more than half of those kept.
        if cache.groups.len() > 2 * accs.len() + 16 {
            cache.inputs.clear();
            cache.groups.clear();
            cache.by_hash.clear();
        }
        Ok(Val::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr) -> Result<Val, EvalError> {
        let op = b.op.to_string();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        let comparison = matches!(op.as_str(), "==" | "!=" | ">" | "<" | ">=" | "<=");
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = elem_binop(&op, l, r)?;
                Ok(Val::Scalar(if comparison {
                    if keep { 1.0 } else { 0.0 }
                } else {
                    v
                }))
            }
            (Val::Vector(l), Val::Scalar(r)) => {
                vector_scalar(&op, l, r, false, return_bool, comparison).map(Val::Vector)
            }
            (Val::Scalar(l), Val::Vector(r)) => {
                vector_scalar(&op, r, l, true, return_bool, comparison).map(Val::Vector)
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let (card, on, names) = match &b.modifier {
                    Some(m) => {
                        let (on, names) = match &m.matching {
                            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
                            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
                            None => (false, Vec::new()),
                        };
                        (m.card.clone(), on, names)
                    }
                    None => (VectorMatchCardinality::OneToOne, false, Vec::new()),
                };
                type Set<'x> = HashSet<Sig<'x>, foldhash::fast::RandomState>;
                match op.as_str() {
                    "and" => {
                        let right: Set<'_> =
                            r.iter().map(|s| signature(&s.labels, on, &names)).collect();
                        Ok(Val::Vector(
                            l.into_iter()
                                .filter(|s| right.contains(&signature(&s.labels, on, &names)))
                                .collect(),
                        ))
                    }
                    "or" => {
                        let add: Vec<bool> = {
                            let left: Set<'_> =
                                l.iter().map(|s| signature(&s.labels, on, &names)).collect();
                            r.iter()
                                .map(|s| !left.contains(&signature(&s.labels, on, &names)))
                                .collect()
                        };
                        let mut out = l;
                        out.extend(
                            r.into_iter()
                                .zip(add)
                                .filter_map(|(s, add)| add.then_some(s)),
                        );
                        Ok(Val::Vector(out))
                    }
                    "unless" => {
                        let right: Set<'_> =
                            r.iter().map(|s| signature(&s.labels, on, &names)).collect();
                        Ok(Val::Vector(
                            l.into_iter()
                                .filter(|s| !right.contains(&signature(&s.labels, on, &names)))
                                .collect(),
                        ))
                    }
                    _ => vector_vector(&op, l, r, &card, on, &names, return_bool).map(Val::Vector),
                }
            }
            _ => err(format!("operator {op} on a string")),
        }
    }
}

/// A sample's match signature for vector matching: its labels named by `on (...)`, or all but
/// the metric name and those named by `ignoring (...)`, in name order, borrowed.
type Sig<'a> = Vec<(&'a str, &'a str)>;

/// The group of an aggregation that a sample labelled `l` joins, added to `cache` when it is
/// new. With `fixed_key` (`by` with up to four names) groups are told apart by their values of
/// the sorted, distinct `by_names`; otherwise by their label set, compared with `key_eq` and
/// built from the labels `in_key` selects.
fn find_group(
    cache: &mut AggCache,
    l: &LabelSet,
    by_names: &[&String],
    fixed_key: bool,
    last_group: Option<usize>,
    key_eq: &dyn Fn(&Labels, &LabelSet) -> bool,
    in_key: &dyn Fn(&String) -> bool,
) -> usize {
    let mut vals: [Option<&String>; 4] = [None; 4];
    if fixed_key {
        for (i, &n) in by_names.iter().enumerate() {
            vals[i] = l.get(n);
        }
    }
    let same = |g: &CachedGroup| {
        if fixed_key {
            g.values.iter().zip(&vals).all(|(a, b)| a.as_ref() == *b)
        } else {
            key_eq(&g.labels, l)
        }
    };
    // Series next to each other in the store often share a group (they are listed in the order
    // they appeared): the last group found is tried first.
    if let Some(gi) = last_group
        && fixed_key
        && same(&cache.groups[gi])
    {
        return gi;
    }
    let mut h = cache.hasher.build_hasher();
    if fixed_key {
        for (i, &n) in by_names.iter().enumerate() {
            if let Some(v) = vals[i] {
                n.hash(&mut h);
                v.hash(&mut h);
            }
        }
    } else {
        for (k, v) in l.iter().filter(|(k, _)| in_key(k)) {
            k.hash(&mut h);
            v.hash(&mut h);
        }
    }
    let hash = h.finish();
    let mut cur = cache.by_hash.get(&hash).copied();
    while let Some(gi) = cur {
        let g = &cache.groups[gi];
        if same(g) {
            return gi;
        }
        cur = g.next;
    }
    let (labels, values) = if fixed_key {
        // The names are sorted and distinct: each insert appends to the map.
        let mut key = Labels::new();
        for (&n, v) in by_names.iter().zip(&vals) {
            if let Some(v) = v {
                key.insert(n.clone(), (*v).clone());
            }
        }
        (
            key,
            vals[..by_names.len()].iter().map(|v| v.cloned()).collect(),
        )
    } else {
        let key = l
            .iter()
            .filter(|(k, _)| in_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (key, Vec::new())
    };
    let gi = cache.groups.len();
    let next = cache.by_hash.insert(hash, gi);
    cache.groups.push(CachedGroup {
        values,
        labels: Arc::new(labels),
        next,
    });
    gi
}

fn signature<'a>(l: &'a LabelSet, on: bool, names: &[String]) -> Sig<'a> {
    l.iter()
        .filter(|(k, _)| {
            if on {
                names.iter().any(|n| n == *k)
            } else {
                *k != METRIC_NAME && !names.iter().any(|n| n == *k)
            }
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A signature as a label set (for messages).
fn sig_labels(sig: &Sig<'_>) -> Labels {
    sig.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A binary operator between two numbers, read once per operation rather than per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

impl BinOp {
    fn parse(op: &str) -> Result<BinOp, EvalError> {
        Ok(match op {
            "+" => BinOp::Add,
            "-" => BinOp::Sub,
            "*" => BinOp::Mul,
            "/" => BinOp::Div,
            "%" => BinOp::Mod,
            "^" => BinOp::Pow,
            "atan2" => BinOp::Atan2,
            "==" => BinOp::Eq,
            "!=" => BinOp::Ne,
            ">" => BinOp::Gt,
            "<" => BinOp::Lt,
            ">=" => BinOp::Ge,
            "<=" => BinOp::Le,
            _ => return err(format!("operator {op} is not supported here")),
        })
    }

    /// The arithmetic result, or for a comparison the left value and whether it holds.
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            BinOp::Add => (l + r, true),
            BinOp::Sub => (l - r, true),
            BinOp::Mul => (l * r, true),
            BinOp::Div => (l / r, true),
            BinOp::Mod => (l % r, true),
            BinOp::Pow => (l.powf(r), true),
            BinOp::Atan2 => (l.atan2(r), true),
            BinOp::Eq => (l, l == r),
            BinOp::Ne => (l, l != r),
            BinOp::Gt => (l, l > r),
            BinOp::Lt => (l, l < r),
            BinOp::Ge => (l, l >= r),
            BinOp::Le => (l, l <= r),
        }
    }
}

/// Applies an operator to two floats: the arithmetic result, or for a comparison the left value
/// and whether the comparison holds.
fn elem_binop(op: &str, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    BinOp::parse(op).map(|b| b.apply(l, r))
}

/// Whether an operator's result drops the metric name: the arithmetic ones do; comparisons
/// (without `bool`) and `atan2` keep it.
fn drops_metric_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^")
}

/// Go's `math.Max`: NaN if either is NaN (Rust's `f64::max` ignores a NaN).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either is NaN.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn vector_scalar(
    op: &str,
    vec: Vec<Elem>,
    scalar: f64,
    swap: bool,
    return_bool: bool,
    comparison: bool,
) -> Result<Vec<Elem>, EvalError> {
    let mut out = Vec::with_capacity(vec.len());
    if vec.is_empty() {
        return Ok(out);
    }
    let bop = BinOp::parse(op)?;
    let drops_name = drops_metric_name(op) || return_bool;
    for mut s in vec {
        let (l, r) = if swap { (scalar, s.v) } else { (s.v, scalar) };
        let (mut value, keep) = bop.apply(l, r);
        // The vector's value is kept even when the scalar is on the left of a comparison.
        if comparison && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        if drops_name {
            s.labels.drop_name();
        }
        s.v = value;
        out.push(s);
    }
    if drops_name {
        check_unique(&out)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    op: &str,
    lhs: Vec<Elem>,
    rhs: Vec<Elem>,
    card: &VectorMatchCardinality,
    on: bool,
    names: &[String],
    return_bool: bool,
) -> Result<Vec<Elem>, EvalError> {
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (lhs, rhs) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let include: Option<&Vec<String>> = match card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            Some(&l.labels)
        }
        _ => None,
    };
    // The "one" side must have unique signatures.
    let mut right: HashMap<Sig<'_>, &Elem, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(rhs.len(), Default::default());
    for s in &rhs {
        let k = signature(&s.labels, on, names);
        if let Some(prev) = right.get(&k) {
            let side = if one_to_many { "left" } else { "right" };
            return err(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the \
                 operation: [{}, {}];many-to-many matching not allowed: matching labels must be \
                 unique on one side",
                crate::format_labels(&sig_labels(&k)),
                crate::format_labels(&prev.labels.to_labels()),
                crate::format_labels(&s.labels.to_labels())
            ));
        }
        right.insert(k, s);
    }
    let mut matched_one: HashSet<Sig<'_>, foldhash::fast::RandomState> = HashSet::default();
    let mut matched_many: HashMap<Sig<'_>, HashSet<LabelSet>, foldhash::fast::RandomState> =
        HashMap::default();
    let mut out = Vec::new();
    for ls in &lhs {
        let k = signature(&ls.labels, on, names);
        let Some(rs) = right.get(&k) else {
            continue;
        };
        let (vl, vr) = if one_to_many {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let (mut value, keep) = elem_binop(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        // The result's labels: the "many" (or left) side's, trimmed as Prometheus does.
        let mut metric = ls.labels.clone();
        if drops_metric_name(op) || return_bool {
            metric.drop_name();
        }
        if matches!(card, VectorMatchCardinality::OneToOne) {
            let keep = |name: &String| names.iter().any(|n| n == name) == on;
            if !metric.iter().all(|(name, _)| keep(name)) {
                metric.to_mut().retain(|name, _| keep(name));
            }
        }
        if let Some(include) = include {
            for name in include {
                match rs.labels.get(name) {
                    Some(v) if !v.is_empty() => {
                        if metric.get(name) != Some(v) {
                            metric.to_mut().insert(name.clone(), v.clone());
                        }
                    }
                    _ => {
                        if metric.get(name).is_some() {
                            metric.to_mut().remove(name);
                        }
                    }
                }
            }
        }
        if matches!(card, VectorMatchCardinality::OneToOne) {
            if !matched_one.insert(k) {
                return err(
                    "multiple matches for labels: many-to-one matching must be explicit \
                     (group_left/group_right)",
                );
            }
        } else {
            let inserted: &mut HashSet<LabelSet> = matched_many.entry(k).or_default();
            if !inserted.insert(metric.clone()) {
                return err(
                    "multiple matches for labels: grouping labels must ensure unique matches",
                );
            }
        }
        out.push(Elem {
            labels: metric,
            t: ls.t,
            v: value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn labels(s: &str) -> Labels {
        crate::parse_series_labels(s).expect("labels")
    }

    /// A store with `x{job="a"}` = 0, 10, 20, ... every 15 s up to 300 s, and a counter reset.
    fn store() -> MemStorage {
        let mut st = MemStorage::new();
        for i in 0..=20 {
            st.append(&labels(r#"x{job="a"}"#), i * 15_000, (i * 10) as f64);
            st.append(&labels(r#"x{job="b"}"#), i * 15_000, (i % 5) as f64);
        }
        st
    }

    fn eval(expr: &str, t_s: i64) -> Vec<(Labels, f64)> {
        let q = Query::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut v: Vec<(Labels, f64)> = q
            .eval_vector(&store(), t_s * 1000)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .into_iter()
            .map(|s| (s.labels, s.v))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    type Case<'a> = (&'a str, i64, &'a [(&'a str, f64)]);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            (r#"x{job="a"}"#, 300, &[(r#"x{job="a"}"#, 200.0)]),
            // Lookback: the last sample at 300 s is still seen at 600 s but not after.
            (r#"x{job="a"}"#, 600, &[(r#"x{job="a"}"#, 200.0)]),
            (r#"x{job="a"}"#, 601, &[]),
            (r#"x{job="a"} offset 1m"#, 300, &[(r#"x{job="a"}"#, 160.0)]),
            (r#"x{job=~"a|b"} > 10"#, 300, &[(r#"x{job="a"}"#, 200.0)]),
            (r#"x{job!="a"}"#, 300, &[(r#"x{job="b"}"#, 0.0)]),
            (r#"x{job!~"a"} == bool 0"#, 300, &[(r#"{job="b"}"#, 1.0)]),
            (
                r#"rate(x{job="a"}[1m])"#,
                300,
                &[(r#"{job="a"}"#, 10.0 / 15.0)],
            ),
            (
                r#"increase(x{job="a"}[1m])"#,
                300,
                &[(r#"{job="a"}"#, 40.0)],
            ),
            (r#"resets(x{job="b"}[5m])"#, 300, &[(r#"{job="b"}"#, 4.0)]),
            (r#"changes(x{job="b"}[1m])"#, 300, &[(r#"{job="b"}"#, 4.0)]),
            (r#"irate(x{job="b"}[1m])"#, 300, &[(r#"{job="b"}"#, 0.0)]),
            (r#"idelta(x{job="a"}[1m])"#, 300, &[(r#"{job="a"}"#, 10.0)]),
            (
                r#"deriv(x{job="a"}[1m])"#,
                300,
                &[(r#"{job="a"}"#, 10.0 / 15.0)],
            ),
            (r#"sum(x)"#, 300, &[("{}", 200.0)]),
            (
                r#"count by (job) (x)"#,
                300,
                &[(r#"{job="a"}"#, 1.0), (r#"{job="b"}"#, 1.0)],
            ),
            (r#"max without (job) (x)"#, 300, &[("{}", 200.0)]),
            (r#"topk(1, x)"#, 300, &[(r#"x{job="a"}"#, 200.0)]),
            (r#"bottomk(1, x)"#, 300, &[(r#"x{job="b"}"#, 0.0)]),
            (r#"absent(nope{a="b"})"#, 300, &[(r#"{a="b"}"#, 1.0)]),
            (r#"absent(x)"#, 300, &[]),
            (r#"vector(time())"#, 300, &[("{}", 300.0)]),
            (r#"scalar(x{job="a"}) * 2"#, 300, &[("{}", 400.0)]),
            (
                r#"clamp_max(x, 100)"#,
                300,
                &[(r#"{job="a"}"#, 100.0), (r#"{job="b"}"#, 0.0)],
            ),
            (
                r#"label_replace(x{job="a"}, "j", "$1-x", "job", "(.*)")"#,
                300,
                &[(r#"x{j="a-x", job="a"}"#, 200.0)],
            ),
            (
                r#"x{job="a"} and on () x{job="b"}"#,
                300,
                &[(r#"x{job="a"}"#, 200.0)],
            ),
            (r#"x{job="a"} unless x{job="a"}"#, 300, &[]),
            (r#"timestamp(x{job="a"})"#, 310, &[(r#"{job="a"}"#, 300.0)]),
        ];
        for (expr, t, want) in cases {
            let want: Vec<(Labels, f64)> = want
                .iter()
                .map(|(l, v)| {
                    let l = if *l == "{}" { Labels::new() } else { labels(l) };
                    (l, *v)
                })
                .collect();
            assert_eq!(eval(expr, *t), want, "{expr} at {t}s");
        }
    }

    #[test]
    fn unsupported_constructs_are_refused_with_their_position() {
        for (expr, what) in [
            ("rate(x[5m:1m])", "a subquery"),
            ("x @ 100", "the @ modifier"),
            ("exp(x)", "function `exp`"),
            ("sum(x)\n  + ln(x)", "function `ln`"),
        ] {
            let e = Query::parse(expr).expect_err(expr);
            let text = e.to_string();
            assert!(text.contains(what), "{expr}: {text}");
        }
        let e = Query::parse("sum(x)\n  + ln(x)")
            .expect_err("ln")
            .to_string();
        assert!(e.contains("line 2, column 5"), "{e}");
    }

    /// Divergences found by running Prometheus 2.42's own test scripts (tests/promqltest.rs).
    #[test]
    fn matches_prometheus_where_it_once_differed() {
        let mut st = MemStorage::new();
        for (l, v) in [
            (r#"v{k="a"}"#, 1.0),
            (r#"v{k="b"}"#, f64::NAN),
            (r#"v{k="c"}"#, 3.0),
            (r#"h_bucket{le="1"}"#, 1.0),
            (r#"h_bucket{le="+Inf"}"#, 2.0),
            (r#"h2_bucket{le="1"}"#, 1.0),
            (r#"h2_bucket{le="+Inf"}"#, 2.0),
        ] {
            st.append(&labels(l), 0, v);
        }
        let run = |e: &str| Query::parse(e).expect(e).eval(&st, 0);
        let vector = |e: &str| match run(e) {
            Ok(Value::Vector(v)) => v,
            other => panic!("{e}: {other:?}"),
        };
        // Go's math.Max/Min propagate NaN bounds.
        assert!(vector("clamp(v, 0, NaN)").iter().all(|s| s.v.is_nan()));
        assert!(vector("clamp_min(v, NaN)").iter().all(|s| s.v.is_nan()));
        // NaN sorts last in both directions.
        let order = |e: &str| -> Vec<String> {
            vector(e)
                .into_iter()
                .map(|s| s.labels["k"].clone())
                .collect()
        };
        assert_eq!(order("sort(v)"), ["a", "c", "b"]);
        assert_eq!(order("sort_desc(v)"), ["c", "a", "b"]);
        // atan2 keeps the metric name, as comparisons do.
        assert!(
            vector("v atan2 v")
                .iter()
                .all(|s| s.labels.get(METRIC_NAME).map(String::as_str) == Some("v"))
        );
        // Histograms that differ only by name collide once the name is dropped.
        let e = run(r#"histogram_quantile(0.5, {__name__=~"h.*_bucket"})"#).expect_err("collision");
        assert!(e.0.contains("same labelset"), "{e}");
        assert_eq!(vector("histogram_quantile(0.5, h_bucket)").len(), 1);
    }

    #[test]
    fn bucket_quantile_interpolates() {
        let mut b = vec![(0.1, 50.0), (0.5, 90.0), (f64::INFINITY, 100.0)];
        assert_eq!(bucket_quantile(0.5, &mut b), 0.1);
        let mut b = vec![(0.1, 50.0), (0.5, 90.0), (f64::INFINITY, 100.0)];
        assert!((bucket_quantile(0.7, &mut b) - 0.3).abs() < 1e-12);
        let mut b = vec![(0.1, 50.0), (0.5, 90.0)];
        assert!(bucket_quantile(0.7, &mut b).is_nan(), "no +Inf bucket");
    }

    proptest::proptest! {
        /// A query evaluated cycle after cycle (its aggregations keep their groups between
        /// evaluations) answers exactly as the same query parsed anew each time, in the same
        /// order, while series appear, go stale, come back and move in the store's order.
        #[test]
        fn aggregations_kept_between_evaluations_answer_as_new_ones(
            present in proptest::collection::vec(proptest::collection::vec(0u8..4, 12), 1..12),
        ) {
            let queries = [
                "sum by (a) (x)",
                "avg without (b) (x)",
                "count by (a, b) (x)",
                "max by (a, b, c, d, e) (x)",
                "min without () (x)",
                "topk by (a) (2, x)",
                "bottomk(1, x)",
                "quantile by (b) (0.5, x)",
                "stddev by (b) (x)",
                "group by (c) (x)",
                "count_values by (a) (\"v\", x)",
                "sum by (__name__) ({__name__=~\"x|y\"})",
                "sum by (a) (-x)",
                "sum without (a) (x * 2)",
                "sum by (a) (rate(x[1m]))",
                "sum by (a) (sum by (a, b) (x))",
            ];
            let kept: Vec<Query> = queries
                .iter()
                .map(|q| Query::parse(q).unwrap_or_else(|e| panic!("{q}: {e}")))
                .collect();
            // Twelve series in a pool; each cycle says per series: absent (0: a staleness
            // marker), or present with a value.
            let pool: Vec<Labels> = (0..12)
                .map(|i| {
                    labels(&format!(
                        r#"{}{{a="{}",b="{}",c="{}"}}"#,
                        if i % 5 == 4 { "y" } else { "x" },
                        i % 3,
                        i % 2,
                        i / 6
                    ))
                })
                .collect();
            let mut st = MemStorage::new();
            for (cycle, row) in present.iter().enumerate() {
                let t = (cycle as i64 + 1) * 15_000;
                // Series first seen in a later cycle come later in the store's order.
                for (i, &p) in row.iter().enumerate() {
                    if p == 0 {
                        if st.series(&pool[i]).is_some() {
                            st.append(&pool[i], t, crate::storage::STALE_NAN);
                        }
                    } else {
                        st.append(&pool[i], t, f64::from(p) * (cycle as f64 + 1.0));
                    }
                }
                for (q, text) in kept.iter().zip(&queries) {
                    let fresh = Query::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
                    let want = fresh.eval_vector(&st, t);
                    let got = q.eval_vector(&st, t);
                    proptest::prop_assert_eq!(
                        format!("{got:?}"),
                        format!("{want:?}"),
                        "{} at cycle {}",
                        text,
                        cycle
                    );
                }
            }
        }
    }
}
