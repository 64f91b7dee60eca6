//! The Grafana dashboards in `dashboards/`: their structure (what Grafana's provisioning needs
//! and what a panel needs to show anything), their template variables, and every PromQL
//! expression they hold — panel targets, annotations and variable queries — parsed by a real
//! Prometheus after Grafana's variables are substituted the way Grafana would.
//! (Whether each expression returns data is the full-stack test's job.)

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use common::{Prometheus, Result, free_port, workspace};
use serde_json::Value;

/// Grafana's built-in variables, with the value substituted for them in expressions.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "1m"),
    ("__interval_ms", "60000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
];

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = workspace().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dashboards/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the four dashboards, found {files:?}"
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", p.display()));
            Dashboard {
                file: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                json,
            }
        })
        .collect()
}

/// Every panel, including those nested in (collapsed) rows.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

fn variables(d: &Value) -> &[Value] {
    d["templating"]["list"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// The variable references in `text`: `$name`, `${name}`, `${name:format}` and `[[name]]`,
/// as (start, end, name) byte ranges.
fn var_refs(text: &str) -> Vec<(usize, usize, String)> {
    let b = text.as_bytes();
    let ident = |from: usize| {
        let mut end = from;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        end
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            let end = ident(i + 2);
            let close = text[end..].find('}').map(|o| end + o);
            if let Some(close) = close.filter(|_| end > i + 2) {
                out.push((i, close + 1, text[i + 2..end].to_owned()));
                i = close + 1;
                continue;
            }
        } else if b[i] == b'$' {
            let end = ident(i + 1);
            if end > i + 1 {
                out.push((i, end, text[i + 1..end].to_owned()));
                i = end;
                continue;
            }
        } else if b[i] == b'[' && b.get(i + 1) == Some(&b'[') {
            let end = ident(i + 2);
            if end > i + 2 && text[end..].starts_with("]]") {
                out.push((i, end + 2, text[i + 2..end].to_owned()));
                i = end + 2;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of a dashboard, with where it is: panel targets, Prometheus
/// annotations, and the series selectors of `label_values(selector, label)` variable queries.
fn expressions(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    format!(
                        "panel {:?} target {}",
                        p["title"].as_str().unwrap_or_default(),
                        t["refId"].as_str().unwrap_or_default()
                    ),
                    e.to_owned(),
                ));
            }
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push((
                format!("annotation {:?}", a["name"].as_str().unwrap_or_default()),
                e.to_owned(),
            ));
        }
    }
    for v in variables(d).iter().filter(|v| v["type"] == "query") {
        let def = v["definition"].as_str().unwrap_or_default();
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'));
        if let Some((selector, _label)) = inner.and_then(|s| s.rsplit_once(',')) {
            out.push((
                format!("variable {:?}", v["name"].as_str().unwrap_or_default()),
                selector.to_owned(),
            ));
        }
    }
    out
}

/// What Grafana would put in place of each user variable: the "All" value when the
/// variable has one (what a dashboard opens with), else its current value.
fn substitutions(d: &Value) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = BUILTINS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for v in variables(d) {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let value = if v["includeAll"] == true {
            v["allValue"].as_str().unwrap_or(".*").to_owned()
        } else if let Some(s) = v["current"]["value"].as_str() {
            s.to_owned()
        } else {
            "x".to_owned()
        };
        out.insert(name, value);
    }
    out
}

fn substitute(expr: &str, subs: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut last = 0;
    for (start, end, name) in var_refs(expr) {
        out.push_str(&expr[last..start]);
        out.push_str(subs.get(&name).map_or("", String::as_str));
        last = end;
    }
    out.push_str(&expr[last..]);
    out
}

#[test]
fn dashboards_are_well_formed() {
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for Dashboard { file, json: d } in &dashboards() {
        let mut bad = |msg: String| problems.push(format!("{file}: {msg}"));
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        if schema < 39 {
            bad(format!("schemaVersion {schema} < 39"));
        }
        match d["uid"].as_str() {
            Some(uid) if !uid.is_empty() && uid.len() <= 40 => {
                if let Some(other) = uids.insert(uid.to_owned(), file.clone()) {
                    bad(format!("uid {uid} is also the uid of {other}"));
                }
            }
            other => bad(format!(
                "uid {other:?} is missing or longer than 40 characters"
            )),
        }
        if d["title"].as_str().is_none_or(str::is_empty) {
            bad("no title".into());
        }
        if d.get("id").is_some_and(|id| !id.is_null()) {
            bad("a provisioned dashboard must not carry a database id".into());
        }

        // Variables.
        let vars = variables(d);
        let defined: HashSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        if defined.len() != vars.len() {
            bad("duplicate variable names".into());
        }
        let ds = vars.iter().find(|v| v["name"] == "datasource");
        if !ds.is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus") {
            bad("no `datasource` variable of type datasource (prometheus)".into());
        }
        for name in ["environment", "instance"] {
            if !defined.contains(name) {
                bad(format!("no `{name}` variable"));
            }
        }
        if (file == "service-overview.json" || file == "dora.json") && !defined.contains("service")
        {
            bad("no `service` variable".into());
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let name = &v["name"];
            if v["datasource"]["uid"] != "${datasource}" {
                bad(format!("variable {name} does not query ${{datasource}}"));
            }
            let def = v["definition"].as_str().unwrap_or_default();
            if !def.starts_with("label_values(") || v["query"]["query"] != def {
                bad(format!(
                    "variable {name}: query {def:?} is not a label_values() matching its definition"
                ));
            }
        }
        // Variables used by multi-value or "All" variables expand to regexes (a|b, .*):
        // they must only appear inside a regex matcher.
        let regex_vars: HashSet<&str> = vars
            .iter()
            .filter(|v| v["multi"] == true || v["includeAll"] == true)
            .filter_map(|v| v["name"].as_str())
            .collect();

        // Panels.
        let mut ids = HashSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                id => bad(format!("panel {title:?}: id {id:?} missing or duplicate")),
            }
            if !p["gridPos"]["w"].is_u64() || !p["gridPos"]["h"].is_u64() {
                bad(format!("panel {title:?}: no gridPos"));
            }
            if p["type"] == "row" {
                let nested = p["panels"].as_array().map_or(0, Vec::len);
                if p["collapsed"] != true && nested > 0 {
                    bad(format!("open row {title:?} must not nest panels"));
                }
                continue;
            }
            if title.is_empty() {
                bad(format!("panel {} has no title", p["id"]));
            }
            if p["datasource"]["uid"] != "${datasource}" || p["datasource"]["type"] != "prometheus"
            {
                bad(format!(
                    "panel {title:?}: datasource is {}",
                    p["datasource"]
                ));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                bad(format!("panel {title:?}: no unit"));
            }
            let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
            if targets.is_empty() {
                bad(format!("panel {title:?}: no targets"));
            }
            let mut refs = HashSet::new();
            for t in targets {
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    bad(format!(
                        "panel {title:?}: target {} has no expr",
                        t["refId"]
                    ));
                }
                if !t["refId"].as_str().is_some_and(|r| refs.insert(r)) {
                    bad(format!(
                        "panel {title:?}: refId {} missing or duplicate",
                        t["refId"]
                    ));
                }
                if !t["datasource"].is_null() && t["datasource"]["uid"] != "${datasource}" {
                    bad(format!(
                        "panel {title:?}: target datasource {}",
                        t["datasource"]
                    ));
                }
            }
            for (_, _, name) in var_refs(title) {
                if !defined.contains(name.as_str()) {
                    bad(format!("panel {title:?}: title uses undefined ${name}"));
                }
            }
        }

        // Annotations from Prometheus query the dashboard's data source.
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if a["builtIn"] == 1 {
                continue;
            }
            if a["datasource"]["uid"] != "${datasource}"
                || a["expr"].as_str().is_none_or(str::is_empty)
            {
                bad(format!(
                    "annotation {}: no expr or not on ${{datasource}}",
                    a["name"]
                ));
            }
        }

        // Every variable used in an expression is defined (or built in), and regex-valued ones
        // sit in regex matchers.
        let builtins: HashSet<&str> = BUILTINS.iter().map(|(k, _)| *k).collect();
        for (place, expr) in expressions(d) {
            for (start, end, name) in var_refs(&expr) {
                if !defined.contains(name.as_str()) && !builtins.contains(name.as_str()) {
                    bad(format!(
                        "{place}: ${name} is not a variable of this dashboard"
                    ));
                }
                if regex_vars.contains(name.as_str()) {
                    let before = &expr[..start];
                    if !(before.ends_with("=~\"") || before.ends_with("!~\""))
                        || !expr[end..].starts_with('"')
                    {
                        bad(format!(
                            "{place}: multi-value ${name} outside a =~\"...\" matcher"
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn provisioning_files_are_valid() -> Result {
    let dir = workspace().join("dashboards/provisioning");
    let providers: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("dashboards.yaml"))?)?;
    assert_eq!(providers["apiVersion"].as_u64(), Some(1));
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"), "{provider:?}");
    assert!(
        provider["options"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')),
        "the file provider needs an absolute options.path: {provider:?}"
    );
    let sources: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("datasources.yaml"))?)?;
    assert_eq!(sources["apiVersion"].as_u64(), Some(1));
    let ds = &sources["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"), "{ds:?}");
    assert!(ds["url"].as_str().is_some_and(|u| u.starts_with("http")));
    Ok(())
}

#[test]
fn variable_references_are_found_and_substituted() {
    let refs: Vec<String> =
        var_refs(r#"a{x=~"$service",y="${window}"}[$__rate_interval] [[old]] $ 5"#)
            .into_iter()
            .map(|(_, _, n)| n)
            .collect();
    assert_eq!(refs, ["service", "window", "__rate_interval", "old"]);
    let subs: HashMap<String, String> = [("service", ".*"), ("__rate_interval", "1m")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(
        substitute(r#"rate(x{s=~"$service"}[$__rate_interval])"#, &subs),
        r#"rate(x{s=~".*"}[1m])"#
    );
}

/// Every expression, variables substituted, is valid PromQL for a real Prometheus.
#[test]
fn every_expression_parses_in_prometheus() -> Result {
    // Nothing listens on the scrape target: an empty TSDB parses and evaluates just the same.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prom = Prometheus::start(nowhere, None)?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for Dashboard { file, json } in &dashboards() {
        let subs = substitutions(json);
        for (place, expr) in expressions(json) {
            let promql = substitute(&expr, &subs);
            checked += 1;
            if let Err(e) = prom.query(&promql) {
                failures.push(format!("{file}: {place}: {e}"));
            }
        }
    }
    assert!(checked > 100, "only {checked} expressions found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
