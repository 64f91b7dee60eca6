//! The Grafana dashboards in `dashboards/`: their structure (what Grafana's provisioning needs
//! and what a panel needs to show anything), their template variables, and every PromQL
//! expression they hold — panel targets, annotations and variable queries — parsed by a real
//! Prometheus after Grafana's variables are substituted the way Grafana would.
//! (Whether each expression returns data is the full-stack test's job.)

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use common::dashboards::{
    Dashboard, dashboards, expressions, panels, substitute, var_refs, variables,
};
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
