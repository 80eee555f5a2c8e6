//! The apiserver's own request counters (`apiserver_request_total` on `/metrics`), to count
//! the API writes kiln makes per build without trusting kiln's own bookkeeping, and the bytes
//! of watch events it sent per kind (`apiserver_watch_events_sizes_sum`).

use std::collections::BTreeMap;

use kube::Client;

/// One counter's identity: verb, resource and subresource (e.g. `PATCH nodebuilds/status`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// HTTP-ish verb as the apiserver labels it (`POST`, `PATCH`, `APPLY`, `LIST`, `WATCH`, …).
    pub verb: String,
    /// Plural resource, e.g. `nodebuilds`.
    pub resource: String,
    /// Subresource, e.g. `status`, or empty.
    pub subresource: String,
    /// The response code when it was not a success (e.g. `409` for a create that found the
    /// object already there), or empty: such requests still cost the apiserver a call.
    pub refused: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.subresource.is_empty() {
            write!(f, "{} {}", self.verb, self.resource)?;
        } else {
            write!(f, "{} {}/{}", self.verb, self.resource, self.subresource)?;
        }
        if !self.refused.is_empty() {
            write!(f, " (answered {})", self.refused)?;
        }
        Ok(())
    }
}

impl Key {
    /// True for requests that change something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        )
    }
}

/// A snapshot of every request counter, summed over scopes and over success codes.
#[derive(Clone, Debug, Default)]
pub struct Requests(pub BTreeMap<Key, u64>);

impl Requests {
    /// Reads the apiserver's counters now (needs a client allowed to GET /metrics).
    pub async fn read(client: &Client) -> Requests {
        Requests::parse(&metrics(client).await)
    }

    /// Parses Prometheus text format.
    pub fn parse(text: &str) -> Requests {
        let mut out = BTreeMap::new();
        for (labels, n) in samples(text, "apiserver_request_total") {
            let label = |name: &str| label(labels, name);
            let key = Key {
                verb: label("verb"),
                resource: label("resource"),
                subresource: label("subresource"),
                // Long-running requests (watches) may carry code 0.
                refused: Some(label("code"))
                    .filter(|c| !c.starts_with('2') && c != "0")
                    .unwrap_or_default(),
            };
            *out.entry(key).or_insert(0) += n as u64;
        }
        Requests(out)
    }

    /// What happened between `before` and `self`, only counters that moved.
    pub fn since(&self, before: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(before.0.get(k).copied().unwrap_or(0));
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect(),
        )
    }

    /// Only writes to the given resources.
    pub fn writes_to(&self, resources: &[&str]) -> Requests {
        Requests(
            self.0
                .iter()
                .filter(|(k, _)| k.is_write() && resources.contains(&k.resource.as_str()))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        )
    }

    /// Every request to the given resources but watches (a watch is counted when it ends,
    /// whenever the client started it).
    pub fn calls_to(&self, resources: &[&str]) -> Requests {
        Requests(
            self.0
                .iter()
                .filter(|(k, _)| k.verb != "WATCH" && resources.contains(&k.resource.as_str()))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        )
    }

    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.0 {
            writeln!(f, "  {k:<32} {v}")?;
        }
        Ok(())
    }
}

/// Bytes of watch events the apiserver has sent for objects of `kind` (all watchers, all
/// groups), from its `apiserver_watch_events_sizes` histogram.
#[allow(dead_code)]
pub async fn watch_event_bytes(client: &Client, kind: &str) -> f64 {
    watch_bytes_by_kind(&metrics(client).await)
        .get(kind)
        .copied()
        .unwrap_or(0.0)
}

/// What the scale harness compares before and after a run, from one read of `/metrics` (a
/// large answer, from an apiserver the run keeps busy).
pub struct Counters {
    /// Every request counter.
    pub requests: Requests,
    /// Bytes of watch events sent so far, per kind.
    pub watch_bytes_by_kind: BTreeMap<String, f64>,
    /// Events the watch caches replayed to watches that started from a resource version
    /// (`apiserver_init_events_total`, all kinds): what resuming watches cost the apiserver.
    pub events_replayed: f64,
}

impl Counters {
    /// Reads them now.
    pub async fn read(client: &Client) -> Counters {
        let text = metrics(client).await;
        Counters {
            requests: Requests::parse(&text),
            watch_bytes_by_kind: watch_bytes_by_kind(&text),
            events_replayed: samples(&text, "apiserver_init_events_total").map(|(_, v)| v).sum(),
        }
    }
}

/// Bytes of watch events sent so far, per kind, in the metrics `text`.
fn watch_bytes_by_kind(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, value) in samples(text, "apiserver_watch_events_sizes_sum") {
        *out.entry(label(labels, "kind")).or_insert(0.0) += value;
    }
    out
}

/// The samples of metric `name` in Prometheus text: each one's labels (between the braces) and
/// value.
fn samples<'t>(text: &'t str, name: &str) -> impl Iterator<Item = (&'t str, f64)> {
    let prefix = format!("{name}{{");
    text.lines().filter_map(move |line| {
        let (labels, value) = line.strip_prefix(prefix.as_str())?.rsplit_once("} ")?;
        Some((labels, value.trim().parse().unwrap_or(0.0)))
    })
}

/// The apiserver's metrics, in Prometheus text format (needs a client allowed to GET /metrics).
async fn metrics(client: &Client) -> String {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    client.request_text(req).await.expect("GET /metrics")
}

/// The value of label `name` in a Prometheus sample's `labels` (between the braces), or empty.
fn label(labels: &str, name: &str) -> String {
    labels
        .split("\",")
        .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .unwrap_or_default()
}
